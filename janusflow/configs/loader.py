"""Load an experiment config (``experiments/<file>.py[:arg]`` or a preset name) and apply
dotted ``key=value`` overrides, validating each key and value type."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import os
import typing

from janusflow.configs.schema import ConfigError, ExperimentConfig
from janusflow.configs import presets


def load_python_file(path: str):
    """Execute an experiment file as a fresh module (config as Python: the user's own file,
    not a checkpoint's). Shared by ``load_config`` and ``janusflow sweep``."""
    mod_spec = importlib.util.spec_from_file_location(f"_janusflow_exp_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def load_config(spec: str) -> ExperimentConfig:
    """``path/to/exp.py`` or ``path/to/exp.py:arg`` (calls ``get_config(arg)``), an experiment
    shipped in the package as ``janusflow:NAME[:arg]`` (``janusflow/experiments/NAME.py``), or a
    preset name such as ``tiny`` / ``janusflow_1_3b`` (a model-only experiment)."""
    if spec.startswith(PACKAGE_PREFIX):
        name, _, arg = spec[len(PACKAGE_PREFIX):].partition(":")
        return _from_module(package_experiment(name), arg, spec)
    path, _, arg = spec.partition(":")
    if not path.endswith(".py"):
        if path in presets.PRESETS:
            model = presets.get_preset(path)
            return ExperimentConfig(name=path, model=model,
                                    seq_len=min(4096, model.llm.max_position_embeddings))
        raise ConfigError(f"--config {spec!r}: expected experiments/<file>.py[:arg] or a preset "
                          f"name in {sorted(presets.PRESETS)}")
    if not os.path.isfile(path):
        raise ConfigError(f"--config: no such file {path!r}")
    return _from_module(load_python_file(path), arg, path)


PACKAGE_PREFIX = "janusflow:"


def package_experiments() -> list[str]:
    """Names of the experiments shipped in ``janusflow/experiments/``."""
    import janusflow.experiments as pkg
    folder = os.path.dirname(pkg.__file__)
    return sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py") and not f.startswith("_"))


def package_experiment(name: str):
    """The module of ``janusflow:NAME``: only names listed in the package folder are imported."""
    import importlib
    known = package_experiments()
    if name not in known:
        raise ConfigError(f"--config {PACKAGE_PREFIX}{name}: no such packaged experiment; known: {', '.join(known)}")
    return importlib.import_module(f"janusflow.experiments.{name}")


def _from_module(module, arg: str, where: str) -> ExperimentConfig:
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{where} defines no get_config(arg)")
    cfg = module.get_config(arg or None)
    if not isinstance(cfg, ExperimentConfig):
        raise ConfigError(f"{where}: get_config must return an ExperimentConfig, got {type(cfg).__name__}")
    return cfg


def _parse(raw: str, current, annotation, key: str):
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    optional = origin is typing.Union and type(None) in args
    if raw in ("None", "none", "null") and (optional or current is None):
        return None
    if isinstance(current, bool) or annotation is bool:
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"--set {key}={raw}: expected a bool")
    if isinstance(current, int) or annotation is int or (optional and int in args):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"--set {key}={raw}: expected an int") from None
    if isinstance(current, float) or annotation is float or (optional and float in args):
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"--set {key}={raw}: expected a float") from None
    if isinstance(current, tuple):
        try:
            value = ast.literal_eval(raw if raw.startswith("(") else f"({raw},)")
        except (ValueError, SyntaxError):
            raise ConfigError(f"--set {key}={raw}: expected a tuple like 1,2,3") from None
        return tuple(value)
    if isinstance(current, str) or annotation is str or (optional and str in args):
        return raw
    raise ConfigError(f"--set {key}: cannot override a field of type {type(current).__name__}")


def apply_overrides(cfg, overrides: list[str]):
    """``["train.optim.lr=3e-4", "model.llm.num_layers=2"]`` -> new frozen config.

    All overrides are applied together and each section is re-validated once, so changes that
    are only consistent jointly (fewer layers *and* an earlier REPA layer) are accepted."""
    tree: dict = {}
    for item in overrides or []:
        key, eq, raw = item.partition("=")
        if not eq:
            raise ConfigError(f"--set {item!r}: expected key=value")
        node = tree
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {p!r} is set as a value and a section")
        node[parts[-1]] = (raw.strip(), key.strip())
    return _apply(cfg, tree, "") if tree else cfg


def _apply(obj, tree: dict, prefix: str):
    if not dataclasses.is_dataclass(obj):
        raise ConfigError(f"--set {prefix}: is a value, not a config section")
    fields = {f.name for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    changes = {}
    for name, sub in tree.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in fields:
            raise ConfigError(f"--set {key}: unknown key {name!r} in {type(obj).__name__}; "
                              f"known: {', '.join(sorted(fields))}")
        current = getattr(obj, name)
        if isinstance(sub, dict):
            changes[name] = _apply(current, sub, key)
        else:
            raw, full = sub
            if dataclasses.is_dataclass(current):
                raise ConfigError(f"--set {full}: is a section, set one of its fields")
            changes[name] = _parse(raw, current, hints.get(name), full)
    try:
        return dataclasses.replace(obj, **changes)
    except ConfigError as e:
        where = prefix or type(obj).__name__
        raise ConfigError(f"--set ({where}): {e}") from None
