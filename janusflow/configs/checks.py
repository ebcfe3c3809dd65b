"""The checks every config dataclass runs in ``__post_init__``: each failure is one
:class:`ConfigError` naming the field (``TrainConfig.steps: must be a positive int, got 0``)."""

from __future__ import annotations

import dataclasses
import math

from janusflow.configs.errors import ConfigError


def check(cond: bool, name: str, msg: str):
    if not cond:
        raise ConfigError(f"{name}: {msg}")


def finite(obj):
    """Every float field (and float in a tuple field) of ``obj`` is a finite number: ``inf``
    or ``nan`` (``--set train.optim.lr=inf``) passes comparisons like ``lr > 0`` and only
    surfaces later as a non-finite loss."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        for i, x in enumerate(v if isinstance(v, tuple) else (v,)):
            if isinstance(x, float) and not math.isfinite(x):
                where = f"{type(obj).__name__}.{f.name}" + (f"[{i}]" if isinstance(v, tuple) else "")
                raise ConfigError(f"{where}: must be a finite number, got {x!r}")


def positive(obj, *names):
    for n in names:
        v = getattr(obj, n)
        check(isinstance(v, int) and not isinstance(v, bool) and v > 0,
               f"{type(obj).__name__}.{n}", f"must be a positive int, got {v!r}")
