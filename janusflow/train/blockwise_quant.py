"""Block-wise quantization of optimizer states to 8 bits (Dettmers et al., "8-bit Optimizers
via Block-wise Quantization", 2021): a tensor is cut into blocks of at most 2048 values, each
block is divided by its absolute maximum, and each normalised value is stored as the index
(uint8) of the nearest entry of a 256-value code book. The code book is the paper's dynamic
(tree) data type: an exponent given by the count of leading zero bits, then a linear fraction
in [0.1, 1], so it resolves values from 1 down to ~1e-7 of the block's maximum.

Blocks run along the last axis only (a block is a run of one row), so the codes keep the
tensor's shape, and with it the tensor's sharding; the per-block scales are 1/block_size of
the tensor and are replicated.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

BLOCK = 2048


def dynamic_code_book(signed: bool) -> np.ndarray:
    """The sorted values of the 8-bit dynamic data type. Signed: 1 sign bit, then E zeros and
    a 1 (exponent 10^-E), then 6-E fraction bits. Unsigned (the second moment, never negative):
    the sign bit becomes one more fraction bit. Zero is the all-zero code."""
    bits = 7 if signed else 8
    vals = [0.0]
    for e in range(bits):
        n = 2 ** (bits - 1 - e)                   # fraction values at exponent 10^-e
        frac = 0.1 + 0.9 * (np.arange(n) + 1) / n    # linear in (0.1, 1]; 1.0 is exact
        vals.extend(10.0 ** -e * frac)
    vals = np.asarray(vals)
    if signed:
        vals = np.concatenate([-vals[1:], vals])
    return np.sort(vals).astype(np.float32)


SIGNED = dynamic_code_book(True)       # 255 values: the first moment
UNSIGNED = dynamic_code_book(False)    # 256 values: the second moment


def block_size(last: int, block: int = BLOCK) -> int:
    """The largest divisor of ``last`` (the last axis) that is at most ``block``: blocks then
    tile each row exactly, no padding (5632 -> 1408, 2048 -> 2048, 768 -> 768)."""
    for b in range(min(block, last), 0, -1):
        if last % b == 0:
            return b
    return 1


class Quantized(NamedTuple):
    codes: jax.Array     # uint8, the tensor's shape
    scales: jax.Array    # float32, shape[:-1] + (blocks per row,): each block's absolute maximum


def _blocks(x, block):
    b = block_size(x.shape[-1], block)
    return x.reshape(x.shape[:-1] + (x.shape[-1] // b, b))


def quantize(x: jax.Array, code_book: np.ndarray, block: int = BLOCK) -> Quantized:
    """Nearest code of every value, blocks normalised by their absolute maximum. With the
    unsigned book a positive value never becomes 0: a second moment read back as 0 would turn
    Adam's step m / (sqrt(v) + eps) into m / eps; it becomes the smallest positive code."""
    xb = _blocks(x.astype(jnp.float32), block)
    scale = jnp.max(jnp.abs(xb), axis=-1)
    xn = xb / jnp.where(scale > 0, scale, 1.0)[..., None]
    idx = nearest_code(xn, code_book)
    if code_book[0] == 0:                                  # unsigned book
        idx = jnp.where((xn > 0) & (idx == 0), 1, idx)
    return Quantized(idx.astype(jnp.uint8).reshape(x.shape), scale)


def nearest_code(xn, code_book: np.ndarray):
    """Index of the code nearest to each value in [-1, 1]. Elementwise, so XLA fuses it into
    one pass with no whole-tensor temporaries (a search loop, or comparing with every code,
    keeps one per step or per code). The book's layout gives the index up to one place: the
    exponent band from log10, the place in the band from its uniform step; comparing with the
    two neighbours then makes it exact."""
    signed = code_book[0] < 0
    bits = 7 if signed else 8
    zero = (len(code_book) - 1) // 2 if signed else 0      # the index of 0
    a = jnp.abs(xn)
    e = jnp.clip(jnp.floor(-jnp.log10(jnp.maximum(a, 1e-30))), 0, bits - 1)
    n = jnp.exp2(bits - 1 - e)                             # codes in band e: 10^-e (0.1, 1]
    k = jnp.clip(jnp.round((a - 10.0 ** -(e + 1)) / (0.9 * 10.0 ** -e / n)), 0, n)
    pos = n - 1 + k                                        # 1 + index among the positive codes
    guess = (zero + jnp.where(xn < 0, -pos, pos)).astype(jnp.int32)
    book = jnp.asarray(code_book)
    best = jnp.clip(guess, 0, len(code_book) - 1)
    for d in (-1, 1):
        c = jnp.clip(guess + d, 0, len(code_book) - 1)
        best = jnp.where(jnp.abs(book[c] - xn) < jnp.abs(book[best] - xn), c, best)
    return best


def dequantize(q: Quantized, code_book: np.ndarray, block: int = BLOCK) -> jax.Array:
    """float32 values of ``q`` (the inverse of ``quantize`` up to the code book's rounding)."""
    vals = jnp.asarray(code_book)[_blocks(q.codes, block).astype(jnp.int32)]
    return (vals * q.scales[..., None]).reshape(q.codes.shape)
