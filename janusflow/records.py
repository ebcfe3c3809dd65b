"""Reading JSON records from users' files with every field's type checked.

A record that is not what we expect is one line naming the file, the line and the field
(``caps.jsonl:7: field 'caption': expected a string or a list of strings, got a number``), never
a traceback and never a silent coercion (``bool("false")`` is True; ``list({"a": 1})`` is
``["a"]``). Readers skip and count such records; :class:`RecordError` carries the line.

- :func:`iter_jsonl` yields ``(line number, Record | RecordError)`` for each non-blank line: a
  line that is not UTF-8, not JSON, not an object or longer than ``max_line_bytes`` is an error
  for that line only, so one bad line never ends a long read.
- :class:`Record` reads typed fields: ``rec.get_str("image")``, ``rec.get_str_list("caption",
  [])``, ``rec.get_objs("qa", [])`` (nested records whose errors name ``qa[2].answer``).
  ``null`` counts as absent, so it takes the default of an optional field.
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterator

REQUIRED = object()                      # default marker: the field must be present
MAX_LINE_BYTES = 16 * 2**20              # a longer line is refused before it is parsed


class RecordError(ValueError):
    """A record or one of its fields has the wrong type; the message names file, line, field."""


def kind(v) -> str:
    """The JSON type of ``v`` in words, with a short excerpt of the value."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"{str(v).lower()} (a boolean)"
    if isinstance(v, (int, float)):
        return f"a number ({v!r})"
    if isinstance(v, str):
        return f"a string ({v[:40]!r}{'...' if len(v) > 40 else ''})"
    if isinstance(v, dict):
        return "an object"
    if isinstance(v, list):
        return "a list"
    return type(v).__name__


class Record:
    """A JSON object read from ``where`` (``"file:line"``); typed getters raise RecordError."""

    def __init__(self, data: Any, where: str, prefix: str = ""):
        if not isinstance(data, dict):
            raise RecordError(f"{where}: expected a JSON object, got {kind(data)}")
        self.data, self.where, self.prefix = data, where, prefix

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def error(self, key: str, expected: str, value) -> RecordError:
        return RecordError(f"{self.where}: field {self.prefix + key!r}: expected {expected}, "
                           f"got {kind(value)}")

    def _get(self, key, default):
        v = self.data.get(key)
        if v is None:
            if default is REQUIRED:
                raise RecordError(f"{self.where}: field {self.prefix + key!r} is missing")
            return default, True
        return v, False

    def get_str(self, key: str, default=REQUIRED, *, nonempty: bool = False) -> str:
        v, absent = self._get(key, default)
        if absent:
            return v
        if not isinstance(v, str) or (nonempty and not v.strip()):
            raise self.error(key, "a non-empty string" if nonempty else "a string", v)
        return v

    def get_bool(self, key: str, default=REQUIRED) -> bool:
        v, absent = self._get(key, default)
        if absent:
            return v
        if not isinstance(v, bool):
            raise self.error(key, "true or false", v)
        return v

    def get_int(self, key: str, default=REQUIRED, *, minimum: int | None = None) -> int:
        v, absent = self._get(key, default)
        if absent:
            return v
        if isinstance(v, bool) or not isinstance(v, int) or (minimum is not None and v < minimum):
            raise self.error(key, "an integer" + (f" >= {minimum}" if minimum is not None else ""), v)
        return v

    def get_float(self, key: str, default=REQUIRED) -> float:
        v, absent = self._get(key, default)
        if absent:
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self.error(key, "a finite number", v)
        return float(v)

    def get_str_list(self, key: str, default=REQUIRED) -> list[str]:
        """A string or a list of strings, as a list."""
        v, absent = self._get(key, default)
        if absent:
            return v
        if isinstance(v, str):
            return [v]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self.error(key, "a string or a list of strings", v)
        return list(v)

    def get_obj(self, key: str, default=REQUIRED) -> "Record":
        v, absent = self._get(key, default)
        if absent:
            return v
        if not isinstance(v, dict):
            raise self.error(key, "an object", v)
        return Record(v, self.where, self.prefix + key + ".")

    def get_objs(self, key: str, default=REQUIRED) -> list["Record"]:
        """A list of objects; each is a Record whose errors name ``key[i].field``."""
        v, absent = self._get(key, default)
        if absent:
            return v
        if not isinstance(v, list):
            raise self.error(key, "a list of objects", v)
        out = []
        for i, x in enumerate(v):
            if not isinstance(x, dict):
                raise self.error(f"{key}[{i}]", "an object", x)
            out.append(Record(x, self.where, f"{self.prefix}{key}[{i}]."))
        return out


def parse_line(line: str, where: str) -> Record:
    """One JSON object from ``line``; RecordError naming ``where`` otherwise."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as e:
        raise RecordError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise RecordError(f"{where}: JSON nested too deeply") from None
    return Record(data, where)


def read_json_object(path: str, hint: str = "") -> dict:
    """The JSON object in file ``path``; RecordError naming the file otherwise (not UTF-8, not
    JSON, not an object). ``hint`` is appended to the message (what the user can do)."""
    tail = f"; {hint}" if hint else ""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecordError(f"{path}: invalid JSON ({e}){tail}") from None
    if not isinstance(data, dict):
        raise RecordError(f"{path}: expected a JSON object, got {kind(data)}{tail}")
    return data


def iter_jsonl(path: str, *, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, Any]]:
    """``(line number from 1, Record or RecordError)`` for every non-blank line of ``path``."""
    for lineno, line in iter_text_lines(path, max_line_bytes=max_line_bytes):
        if isinstance(line, RecordError):
            yield lineno, line
        elif line.strip():
            try:
                yield lineno, parse_line(line, f"{path}:{lineno}")
            except RecordError as e:
                yield lineno, e


def iter_text_lines(path: str, *, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, Any]]:
    """``(line number from 1, str without its newline, or RecordError)`` for every line."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(_lines(fh, max_line_bytes), 1):
            where = f"{path}:{lineno}"
            if raw is None:
                yield lineno, RecordError(f"{where}: line longer than {max_line_bytes} bytes, skipped")
                continue
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):     # a BOM from Windows editors
                raw = raw[3:]
            try:
                yield lineno, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                yield lineno, RecordError(f"{where}: not UTF-8 (byte 0x{raw[e.start]:02x} at "
                                          f"column {e.start + 1})")


def _lines(fh, limit: int):
    """Raw lines of a binary file; None for a line over ``limit`` bytes (read past in chunks,
    never held whole)."""
    while True:
        raw = fh.readline(limit + 1)
        if not raw:
            return
        if len(raw) > limit and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):
                raw = fh.readline(2**20)
            yield None
            continue
        yield raw
