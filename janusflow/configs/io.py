"""Config dataclasses <-> JSON-compatible dicts, validated field by field.

``to_dict`` turns a (nested) frozen config dataclass into plain dicts, lists and scalars;
``from_dict`` rebuilds it and rejects anything it does not understand: an unknown key, or a
value of the wrong type, raises :class:`~janusflow.configs.schema.ConfigError` naming the dotted path
(``model.llm.num_layers``). Fields absent from the dict take their defaults, so a checkpoint
written before a field existed still loads; a class with an ``upgrade_dict(d, path)`` rewrites
the keys it has retired first. Value checks (positivity, divisibility...) are the
dataclasses' own ``__post_init__``; this module checks types only.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

from janusflow.configs.schema import ConfigError


def to_dict(cfg) -> dict:
    """Nested config dataclass -> dict of JSON types (tuples become lists)."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"to_dict expects a config dataclass instance, got {type(cfg).__name__}")
    return {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def _plain(v):
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return to_dict(v)
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    return v


def from_dict(cls, d: Any, path: str = ""):
    """Build ``cls`` (a config dataclass) from ``d``; ``path`` prefixes error messages."""
    where = path or cls.__name__
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected an object/dict, got {type(d).__name__}")
    upgrade = getattr(cls, "upgrade_dict", None)      # keys a config class has retired
    if upgrade is not None:
        d = upgrade(d, path)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in d if k not in fields]
    if unknown:
        raise ConfigError(f"{_join(path, unknown[0])}: unknown key for {cls.__name__} "
                          f"(known: {', '.join(sorted(fields))})")
    kwargs = {k: _convert(_field_type(hints[k], fields[k]), v, _join(path, k)) for k, v in d.items()}
    return cls(**kwargs)


def _field_type(tp, f: dataclasses.Field):
    # A bare ``tuple`` annotation says nothing about its items: take the item type from the
    # default (``pixel_mean`` holds floats, ``block_out_channels`` ints).
    if tp is tuple and isinstance(f.default, tuple) and f.default:
        item = type(f.default[0])
        if item in (bool, int, float, str) and all(type(x) is item for x in f.default):
            return tuple[item, ...]
    return tp


def _join(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


def _type_name(tp) -> str:
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp, v, path: str):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        if v is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for a in options:
            try:
                return _convert(a, v, path)
            except ConfigError:
                pass
        raise ConfigError(f"{path}: expected {' or '.join(map(_type_name, args))}, got {v!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, v, path)
    if tp is bool:
        if not isinstance(v, bool):
            raise ConfigError(f"{path}: expected a bool, got {v!r}")
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{path}: expected an int, got {v!r}")
        return v
    if tp is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {v!r}")
        return float(v)
    if tp is str:
        if not isinstance(v, str):
            raise ConfigError(f"{path}: expected a string, got {v!r}")
        return v
    if tp is tuple or origin is tuple:
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {v!r}")
        if args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(v):
                raise ConfigError(f"{path}: expected {len(args)} items, got {len(v)}")
            return tuple(_convert(a, x, f"{path}[{i}]") for i, (a, x) in enumerate(zip(args, v)))
        item = args[0] if args else None
        out = []
        for i, x in enumerate(v):
            if item is not None:
                out.append(_convert(item, x, f"{path}[{i}]"))
            elif isinstance(x, (bool, int, float, str)) or x is None:
                out.append(x)
            elif isinstance(x, (list, tuple)):     # e.g. sharding rules: (("batch", ("data", "fsdp")),)
                out.append(_convert(tuple, x, f"{path}[{i}]"))
            else:
                raise ConfigError(f"{path}[{i}]: expected a scalar, got {x!r}")
        return tuple(out)
    if tp is Any:
        return v
    raise ConfigError(f"{path}: field type {_type_name(tp)} is not supported by config_io")


def dumps(cfg, **kw) -> str:
    return json.dumps(to_dict(cfg), indent=kw.pop("indent", 2), sort_keys=False, **kw)


def loads(cls, text: str, path: str = ""):
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path or cls.__name__}: invalid JSON ({e})") from None
    return from_dict(cls, d, path)
