"""Strict reading of GenEval per-image results (the official results-jsonl schema).

Every record is parsed with its field types checked: ``tag`` and ``prompt`` strings,
``correct`` a JSON boolean (``"false"`` is an error, not true), ``metadata`` the prompt object
or its JSON string, ``filename`` a string when present. A bad record or a second record for
the same ``filename`` is skipped, counted, and named in one problem line
(``file:line: field: what is wrong``), so one bad line neither stops a summary nor counts twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, Optional

_FIELDS = (("tag", str, "a string"), ("prompt", str, "a string"), ("correct", bool, "true or false"))


@dataclass
class Results:
    records: list = field(default_factory=list)    # valid, first of each filename
    problems: list = field(default_factory=list)   # one line per skipped record
    bad: int = 0
    duplicates: int = 0


def check_record(rec, where: str) -> Optional[str]:
    """None if ``rec`` is a valid results record, else one line naming ``where`` and the field."""
    if not isinstance(rec, dict):
        return f"{where}: expected a JSON object, got {type(rec).__name__}"
    for name, kind, what in _FIELDS:
        if name not in rec:
            return f"{where}: {name}: missing"
        if not isinstance(rec[name], kind):       # bool is checked exactly: "false" is no bool
            return f"{where}: {name}: expected {what}, got {rec[name]!r}"
    if "filename" in rec and not isinstance(rec["filename"], str):
        return f"{where}: filename: expected a string, got {rec['filename']!r}"
    if "metadata" not in rec:
        return f"{where}: metadata: missing"
    meta = rec["metadata"]
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError as e:
            return f"{where}: metadata: not a JSON string of the prompt object ({e.msg})"
    if not isinstance(meta, dict):
        return f"{where}: metadata: expected the prompt object, got {type(meta).__name__}"
    return None


def parse_records(items: Iterable[tuple[str, object]]) -> Results:
    """``(where, record)`` pairs -> :class:`Results` (valid records, problems, counts)."""
    out, first = Results(), {}
    for where, rec in items:
        if isinstance(rec, str):          # a line that was not JSON: the reader's message
            out.problems.append(rec)
            out.bad += 1
            continue
        problem = check_record(rec, where)
        if problem:
            out.problems.append(problem)
            out.bad += 1
            continue
        name = rec.get("filename")
        if name is not None and name in first:
            w0, r0 = first[name]
            how = "repeats" if r0 == rec else "contradicts"
            out.problems.append(f"{where}: filename: {name!r} {how} {w0}; skipped")
            out.duplicates += 1
            continue
        if name is not None:
            first[name] = (where, rec)
        out.records.append(rec)
    return out


def _lines(path: str):
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            where = f"{path}:{n}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield where, f"{where}: not UTF-8 ({e.reason} at byte {e.start})"
                continue
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                yield where, f"{where}: invalid JSON ({e.msg}, column {e.colno})"


def read_results(path: str) -> Results:
    """A results-jsonl file, line by line (see the module docstring)."""
    return parse_records(_lines(path))
