"""Elementwise work on a big tensor done one chunk of its leading axis at a time
(``jax.lax.map``), so that the float32 working copies it makes (dequantized moments, the sum
of a bfloat16 weight and its update, random bits for stochastic rounding) exist for one chunk
rather than for the whole tensor. XLA keeps such copies of every tensor of the optimizer
update live at once otherwise: for the 1.3B fine-tune they were most of the step's memory
(experiments/finetune_memory.md).

A chunk is a run of whole leading-axis slices (a scanned model's layers, rows of an
embedding), so any computation that treats those slices independently gives the same numbers
chunked or not.
"""

from __future__ import annotations

import math

import jax

# values per chunk (at most, when the leading axis allows it): 64 MiB of float32
MAX_VALUES = 1 << 24


def chunk_count(shape: tuple, max_values: int) -> int:
    """The fewest chunks, a divisor of the leading axis, of at most ``max_values`` values each
    (the leading axis itself when no divisor is small enough); 1 for small tensors."""
    size = math.prod(shape)
    if not shape or size <= max_values:
        return 1
    lead = shape[0]
    return next((n for n in range(1, lead + 1) if lead % n == 0 and size // n <= max_values), lead)


def by_chunks(fn, *xs, key=None, max_values: int | None = None):
    """``fn(*xs)`` (``fn(*xs, key)`` with ``key``) computed chunk by chunk of the common leading
    axis of ``xs``, chunks counted from ``xs[0]``'s shape; results (a pytree of arrays with that
    leading axis) put back together. With ``key`` chunk i gets ``fold_in(key, i)``, and an
    unchunked call gets ``key`` itself. ``max_values``: default ``MAX_VALUES`` (read at call time)."""
    n = chunk_count(xs[0].shape, max_values or MAX_VALUES)
    if n == 1:
        return fn(*xs) if key is None else fn(*xs, key)
    split = tuple(x.reshape((n, x.shape[0] // n) + x.shape[1:]) for x in xs)
    if key is None:
        out = jax.lax.map(lambda s: fn(*s), split)
    else:
        out = jax.lax.map(lambda s: fn(*s[0], jax.random.fold_in(key, s[1])), (split, jax.numpy.arange(n)))
    return jax.tree.map(lambda y: y.reshape((y.shape[0] * y.shape[1],) + y.shape[2:]), out)
