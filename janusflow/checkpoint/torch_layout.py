"""Mapping between PyTorch state dicts (official key names) and NNX parameter trees.

The key maps (:mod:`janusflow.checkpoint.key_maps`) are ``{torch_key: (nnx_path, transform)}``.
This file holds the transforms and the two generic directions, so that each model states its
layout once and import/export can never disagree. Transforms are exact (transposes and
reshapes only), so import followed by export is bit-identical.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from janusflow.models.layers import PackedWeight

# name -> (torch array -> ours, ours -> torch array)
TRANSFORMS: dict[str, tuple[Callable, Callable]] = {
    "plain": (lambda a: a, lambda a: a),
    # torch Linear weight (out, in) <-> our kernel (in, out)
    "linear": (lambda a: a.T, lambda a: a.T),
    # torch Conv2d weight (O, I, kh, kw) <-> our (kh, kw, I, O)
    "conv": (lambda a: a.transpose(2, 3, 1, 0), lambda a: a.transpose(3, 2, 0, 1)),
    # GRN gamma/beta stored (1, 1, 1, C) <-> ours (C,)
    "grn": (lambda a: a.reshape(-1), lambda a: a.reshape(1, 1, 1, -1)),
    # "squeeze:1,1,-1": a torch parameter of that shape <-> ours flattened to (D,) -- handled
    # in to_ours/to_torch because the torch shape is part of the name.
    # 1x1 conv (O, I, 1, 1) <-> our Linear kernel (I, O) (diffusers VAE attention in old layouts)
    "conv1x1_linear": (lambda a: a[:, :, 0, 0].T, lambda a: a.T[:, :, None, None]),
    # (N, D) <-> ours (1, N, D) (transformers' position-embedding table vs timm's parameter)
    "unsqueeze0": (lambda a: a[None], lambda a: a[0]),
}

KeyMap = Mapping[str, tuple[tuple, str]]


class CheckpointMismatch(ValueError):
    """Missing, unexpected or mis-shaped keys; the message lists them by name."""


@partial(jax.jit, donate_argnums=0)
def _set_row(stack, row, i):
    return jax.lax.dynamic_update_index_in_dim(stack, row.astype(stack.dtype), i, 0)


class _Stacked:
    """Writes into one stacked parameter (scanned layers). Rows go into a device buffer updated
    in place (donated), assigned to the variable once by :func:`flush`: neither a host copy of
    the whole stack nor a copy of it per layer."""

    def __init__(self, var: nnx.Variable):
        self.var, self.buf = var, None

    def write(self, i: int, a) -> None:
        if self.buf is None:
            old = self.var.get_value()
            if isinstance(old, jax.ShapeDtypeStruct):
                # an abstract model gets the dtype asked for (load's dtype=); a real one keeps its own
                self.buf = jnp.zeros(old.shape, jnp.asarray(a).dtype)
            else:
                # our own copy: the donated updates must not invalidate an array shared elsewhere
                self.buf = jnp.array(old, copy=True)
        self.buf = _set_row(self.buf, jnp.asarray(a), jnp.int32(i))

    def flush(self) -> None:
        if self.buf is None:
            return
        old = self.var.get_value()
        new = self.buf
        if getattr(old, "sharding", None) is not None:      # keep a placed model's layout
            new = jax.device_put(new, old.sharding)
        self.var.set_value(new)
        self.buf = None


class LayerSlice:
    """Layer ``i`` of a stacked parameter, read and written like the ``nnx.Variable`` of the
    unrolled model, so key maps name layers as ``layers.i.*`` whether the model scans or not."""

    def __init__(self, stacked: _Stacked, i: int):
        self.stacked, self.i = stacked, i

    @property
    def shape(self):
        return tuple(self.stacked.var.get_value().shape[1:])

    def get_value(self):
        if self.stacked.buf is not None:
            return self.stacked.buf[self.i]
        v = self.stacked.var.get_value()
        if isinstance(v, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(v.shape[1:], v.dtype)
        return v[self.i]

    def set_value(self, a) -> None:
        self.stacked.write(self.i, a)


def refuse_decoding_layout(module) -> None:
    """Checkpoints hold dense kernels as (in, out): a model whose ``Linear`` weights the decoders
    keep as ``kernel_t`` (out, in) or packed (``sample/layout.decoding_layout``) is refused,
    naming the first such weight."""
    for k, _ in nnx.to_flat_state(nnx.state(module, PackedWeight)):
        raise CheckpointMismatch(
            f"{'.'.join(map(str, k))}: this model is in the decoders' layout (dense weights packed in 12 bits); "
            f"save or export the model it was made from")
    for k, _ in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        if k[-1] == "kernel_t":
            raise CheckpointMismatch(
                f"{'.'.join(map(str, k))}: this model is in the decoders' layout (dense weights stored "
                f"(out, in)); save or export the model it was made from")


def flat_params(module) -> dict[tuple, nnx.Variable]:
    """Parameters by path; a stacked (scanned) parameter appears as one :class:`LayerSlice` per
    layer under the unrolled path. Call :func:`flush` after writing through the result."""
    refuse_decoding_layout(module)
    out = {}
    for k, v in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        k = tuple(k)
        depth = v.get_metadata().get("stacked_depth")
        if depth is None:
            out[k] = v
            continue
        stacked = _Stacked(v)
        at = len(k) - depth
        for i in range(v.get_value().shape[0]):
            out[k[:at] + (i,) + k[at:]] = LayerSlice(stacked, i)
    return out


def flush(params: Mapping) -> None:
    """Assign what was written into stacked parameters through ``params`` (from flat_params)."""
    for s in {id(v.stacked): v.stacked for v in params.values() if isinstance(v, LayerSlice)}.values():
        s.flush()


def to_ours(name: str, transform: str, array: np.ndarray) -> np.ndarray:
    if transform.startswith("squeeze"):
        return np.asarray(array).reshape(-1)
    return TRANSFORMS[transform][0](np.asarray(array))


def to_torch(transform: str, array: np.ndarray) -> np.ndarray:
    if transform.startswith("squeeze:"):
        # "squeeze:1,1,-1" -> reshape to that torch shape
        shape = tuple(int(s) for s in transform.split(":", 1)[1].split(","))
        return np.asarray(array).reshape(shape)
    return TRANSFORMS[transform][1](np.asarray(array))


def load_state_dict(module, state_dict: Mapping[str, np.ndarray], key_map: KeyMap, *,
                    strict: bool = True, dtype=None) -> None:
    """Copy ``state_dict`` into ``module`` in place.

    With ``strict`` every key of ``state_dict`` must be in ``key_map`` and every entry of
    ``key_map`` must be present; every parameter of ``module`` must be covered. Shapes must
    match exactly. All problems are collected and reported together, by name.
    """
    params = flat_params(module)
    missing = [k for k in key_map if k not in state_dict]
    unexpected = [k for k in state_dict if k not in key_map]
    uncovered = sorted(set(params) - {p for p, _ in key_map.values()})
    unknown_targets = [f"{k} -> {'.'.join(map(str, p))}" for k, (p, _) in key_map.items()
                       if p not in params]
    bad_shape = []
    for k, (path, tr) in key_map.items():
        if k in state_dict and path in params:
            a = to_ours(k, tr, state_dict[k])
            if a.shape != tuple(params[path].shape):
                bad_shape.append(f"{k}: checkpoint {tuple(np.shape(state_dict[k]))} -> {a.shape}, "
                                 f"model expects {params[path].shape}")
    problems = []
    if missing and strict:
        problems.append("missing keys: " + ", ".join(missing))
    if unexpected and strict:
        problems.append("unexpected keys: " + ", ".join(unexpected))
    if uncovered:
        problems.append("model parameters with no checkpoint key: "
                        + ", ".join(".".join(map(str, p)) for p in uncovered))
    if unknown_targets:
        problems.append("key map points at unknown parameters: " + ", ".join(unknown_targets))
    if bad_shape:
        problems.append("shape mismatches: " + "; ".join(bad_shape))
    if problems:
        raise CheckpointMismatch("\n".join(problems))
    for k, (path, tr) in key_map.items():
        if k not in state_dict:
            continue
        var = params[path]
        a = to_ours(k, tr, state_dict[k])
        # get_value() also works on abstract (nnx.eval_shape) modules, so a checkpoint can be
        # loaded into a model that never ran its random initialisers.
        var.set_value(jnp.asarray(a, dtype=dtype or var.get_value().dtype))
    flush(params)


def export_state_dict(module, key_map: KeyMap) -> dict[str, np.ndarray]:
    params = flat_params(module)
    return {k: to_torch(tr, np.asarray(params[path].get_value())) for k, (path, tr) in key_map.items()}
