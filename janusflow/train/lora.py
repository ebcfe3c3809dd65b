"""LoRA (Hu et al. 2021) on the LLM's attention and MLP projections: each targeted kernel W
(in, out) trains as W + (alpha / rank) * A @ B with W frozen, A (in, rank) random and B
(rank, out) zero, so training starts from the checkpoint's function exactly.

The factors live in the train state's trainable params under :data:`LORA_KEY`, keyed by the
kernel's dotted path; W stays in the frozen params (no gradient, no optimizer state). The
model is only ever built merged (``train/state.py::merge_model`` calls :func:`apply_lora`),
so the step, the sample grids and the saved final model (``WORKDIR/model``, what
``janusflow convert --to-hf`` exports) all see W + (alpha / rank) * A @ B: LoRA runs are
exported merged, with no LoRA code needed to load them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LORA_KEY = "lora"
LORA_STREAM = 0x10AA      # the factors' init stream, folded into train.seed
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def target_paths(frozen: dict, targets=TARGETS) -> list[tuple]:
    """Paths (tuples of keys) of the LLM kernels LoRA adapts in the frozen pure dict."""
    out = []
    for path, _ in jax.tree_util.tree_flatten_with_path(frozen.get("language_model", {}))[0]:
        keys = ("language_model",) + tuple(getattr(k, "key", getattr(k, "idx", None)) for k in path)
        if len(keys) >= 2 and keys[-1] == "kernel" and keys[-2] in targets:
            out.append(keys)
    return out


def path_name(path: tuple) -> str:
    return ".".join(str(k) for k in path)


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def init_lora(frozen: dict, rank: int, key) -> dict:
    """``{path name: {"a": (..., in, rank), "b": (..., rank, out)}}`` for every target kernel
    (A: N(0, 1/in) as a linear layer's init; B: zeros)."""
    out = {}
    for i, path in enumerate(target_paths(frozen)):
        w = _get(frozen, path)
        a = jax.random.normal(jax.random.fold_in(key, i), w.shape[:-1] + (rank,), jnp.float32)
        out[path_name(path)] = {"a": (a / jnp.sqrt(w.shape[-2])).astype(w.dtype),
                                "b": jnp.zeros(w.shape[:-2] + (rank, w.shape[-1]), w.dtype)}
    return out


def apply_lora(frozen: dict, lora: dict, scale: float) -> dict:
    """``frozen`` with every adapted kernel replaced by W + scale * A @ B (a new dict; the
    untouched subtrees are shared)."""
    by_name = {path_name(p): p for p in target_paths(frozen)}
    unknown = sorted(set(lora) - set(by_name))
    if unknown:
        raise ValueError(f"LoRA factors for kernels the model does not have: {unknown[:3]}")
    out = frozen
    for name, f in lora.items():
        path = by_name[name]
        w = _get(frozen, path)
        merged = (w.astype(jnp.float32) + scale * jnp.matmul(f["a"].astype(jnp.float32),
                                                             f["b"].astype(jnp.float32))).astype(w.dtype)
        out = _set(out, path, merged)
    return out


def _set(tree, path, value):
    if not path:
        return value
    copy = dict(tree)
    copy[path[0]] = _set(tree[path[0]], path[1:], value)
    return copy
