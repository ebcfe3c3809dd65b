"""Streaming a checkpoint into a model: the checkpoint's keys, shapes and dtypes are checked
against a key map from the file headers alone (every problem in one :class:`CheckpointMismatch`),
then tensors are assigned one at a time into the module, which may be abstract
(``build_model(..., abstract=True)``), so host memory stays near the size of the model itself."""

from __future__ import annotations

from typing import Callable, Mapping, Optional

import jax
import jax.numpy as jnp

from janusflow.checkpoint.precheck import all_finite
from janusflow.checkpoint.tensor_io import FLOAT_DTYPES, shape_probe
from janusflow.checkpoint.torch_layout import CheckpointMismatch, flat_params, flush, to_ours, to_torch

# (tensors done, tensors total, bytes done, bytes total)
Progress = Optional[Callable[[int, int, int, int], None]]


def load_dtype(dtype):
    """A parameter dtype name ('float32' | 'bfloat16' | None: the model's own) as a jnp dtype."""
    if dtype is None:
        return None
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    return jnp.dtype(dtype)


def under(path: tuple, prefixes) -> bool:
    """``path`` lies under one of the path ``prefixes``."""
    return any(path[:len(p)] == p for p in prefixes)


def stream_load(module, source, key_map: Mapping, *, dtype=None, ignore=None, rename=None,
                training_only=(), progress: Progress = None) -> None:
    """Check ``source`` against ``key_map`` (keys, shapes, float dtypes) from headers only,
    raise one :class:`CheckpointMismatch` listing every problem, then assign the tensors into
    ``module`` (which may be abstract) as they are read. ``ignore(key)``: keys to skip
    knowingly; ``rename(key, array) -> (key, array)``: legacy-name normalisation; parameters
    under ``training_only`` path prefixes may be absent from ``key_map``."""
    params = flat_params(module)
    rename = rename or (lambda k, a: (k, a))
    seen, unexpected, bad = {}, [], []
    for k, info in source.index.items():
        if ignore is not None and ignore(k):
            continue
        nk, probe = rename(k, shape_probe(info.shape))
        if nk in seen:
            bad.append(f"{k}: duplicates {seen[nk]} (both map to {nk})")
            continue
        seen[nk] = k
        if nk not in key_map:
            unexpected.append(k)
            continue
        if info.dtype not in FLOAT_DTYPES:
            bad.append(f"{k}: dtype {info.dtype} is not a float type")
        path, tr = key_map[nk]
        if path in params:
            want = tuple(params[path].get_value().shape)
            if to_ours(nk, tr, probe).shape != want:
                bad.append(f"{k}: checkpoint shape {info.shape}, model expects "
                           f"{to_torch(tr, shape_probe(want)).shape}")
    missing = [k for k in key_map if k not in seen]
    targets = {p for p, _ in key_map.values()}
    unknown = [f"{k} -> {'.'.join(map(str, p))}" for k, (p, _) in key_map.items() if p not in params]
    uncovered = [".".join(map(str, p)) for p in params
                 if p not in targets and not under(p, training_only)]
    problems = []
    for title, items, sep in (("missing keys", missing, ", "), ("unexpected keys", unexpected, ", "),
                              ("shape/dtype mismatches", bad, "; "),
                              ("model parameters with no checkpoint key", uncovered, ", "),
                              ("key map points at unknown parameters", unknown, ", ")):
        if items:
            problems.append(f"{title} ({len(items)}): {sep.join(items)}")
    if problems:
        raise CheckpointMismatch(f"{source.path}:\n" + "\n".join(problems))
    wanted = list(seen.values())
    total = sum(source.index[k].nbytes for k in wanted)
    done = nbytes = 0
    for k, arr in source.iter(wanted):
        if source.index[k].dtype in FLOAT_DTYPES and not all_finite(arr):
            raise CheckpointMismatch(f"{source.index[k].file}: tensor {k} holds NaN or inf values; "
                                     "refusing to load a corrupt checkpoint")
        nk, arr = rename(k, arr)
        path, tr = key_map[nk]
        var = params[path]
        old = var.get_value()
        new = jnp.asarray(to_ours(nk, tr, arr), dtype=dtype or old.dtype)
        if getattr(old, "sharding", None) is not None:      # keep a placed model's layout
            new = jax.device_put(new, old.sharding)
        var.set_value(new)
        del new, arr
        done, nbytes = done + 1, nbytes + source.index[k].nbytes
        if progress:
            progress(done, len(wanted), nbytes, total)
    flush(params)


def abstract_leftovers(module, skip=()) -> list:
    """Parameters of an abstract-built module that no tensor was assigned to."""
    return [".".join(map(str, p)) for p, v in flat_params(module).items()
            if isinstance(v.get_value(), jax.ShapeDtypeStruct) and not under(p, skip)]
