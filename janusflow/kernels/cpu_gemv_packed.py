"""bf16 weights kept in a lossless 12-bit form for the decoders' few-row products on CPU.

Why: a decoding step at batch 1 (one image token and its CFG row) reads every weight once for
two multiply-adds, so its speed is the speed the weights stream from memory. The high byte of
a bf16 weight (sign, 7 of the 8 exponent bits) takes few values in a matrix: the 15 most common
cover all but ~2e-4 of the weights of a Gaussian-like matrix (the init, and trained ones alike).
:func:`pack` keeps each weight's low byte plus a 4-bit code of its high byte (code 15: the
weight is an *exception*, kept exactly in a short per-row list), 12 bits instead of 16, and
``cpu_gemv_packed.cc`` decodes them in registers while it streams them: the same weights, bit
for bit (:func:`unpack` restores them), 25% fewer bytes read per token
(experiments/janus_pro_speed.md).

:func:`dot` is ``x @ w.T`` for ``w`` (out, in) packed: on the kernel when ``x`` is bf16 with at
most :data:`MAX_ROWS` rows (decoding steps and prompts), else XLA's dot on the unpacked
weights (long sequences, other dtypes, other backends). Forward only: the decoders' layout is
not trained.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from janusflow.kernels import cpu_gemv
from janusflow.kernels.build import register_avx512

TARGET = "janusflow_gemv_packed"
BLOCK = 64          # columns decoded at once; the in-features must be a multiple
EXCEPTION = 15      # the code of a weight kept in the exception list
# Up to this many rows of x (a decoding step, a prompt) the kernel beats XLA's dot on the
# unpacked weights, which it must unpack first (2048 x 5632: 64 rows 3.6 vs 17.9 ms, 256 rows
# 13.0 vs 21.4, 1024 rows 54 vs 42; experiments/janus_pro_speed.md)
MAX_ROWS = 256

# storage position -> column within a block of 64: what AVX-512's per-lane byte interleave
# (unpacklo / unpackhi) turns into columns 0..31 / 32..63 (cpu_gemv_packed.cc)
_POS = np.arange(BLOCK)
COLUMN_OF_POSITION = np.where(_POS % 16 < 8, 8 * (_POS // 16) + _POS % 16, 32 + 8 * (_POS // 16) + _POS % 16 - 8)
POSITION_OF_COLUMN = np.argsort(COLUMN_OF_POSITION)


class PackedWeights(NamedTuple):
    """A bf16 matrix (out, in) in 12 bits per weight (see the module docstring)."""
    lo: jax.Array        # (out, in) uint8, blocks in storage order
    codes: jax.Array     # (out, in / 2) uint8, two 4-bit codes per byte
    table: jax.Array     # (16,) uint8: the high byte of each code (EXCEPTION's: 0)
    eptr: jax.Array      # (out + 1,) int32: row j's exceptions are [eptr[j], eptr[j + 1])
    ecol: jax.Array      # (E,) int32: their columns
    evals: jax.Array     # (E,) bf16: their weights

    @property
    def shape(self) -> tuple[int, int]:
        return self.lo.shape

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self)


@functools.cache
def available() -> bool:
    """Build, check the CPU and register the handler on the first call; False (said once on
    stderr) if it cannot be used here."""
    return register_avx512("cpu_gemv_packed", "JanusflowGemvPacked", TARGET, "XLA's dot on the unpacked weights")


def packable(wt) -> bool:
    """Whether :func:`pack` takes this matrix: 2-D bf16 (out, in) with in a positive multiple of 64."""
    return (getattr(wt, "ndim", 0) == 2 and wt.dtype == jnp.bfloat16 and wt.shape[1] > 0
            and wt.shape[1] % BLOCK == 0)


@jax.jit
def _split_bytes(wt, code_of):
    """lo bytes and 4-bit codes in storage order, and where the exceptions are."""
    bits = jax.lax.bitcast_convert_type(wt, jnp.uint16)
    code = code_of[(bits >> 8).astype(jnp.int32)]
    exception = code == EXCEPTION
    lo = jnp.where(exception, 0, bits & 0xFF).astype(jnp.uint8)
    n, k = wt.shape
    order = jnp.asarray(COLUMN_OF_POSITION)
    lo = lo.reshape(n, k // BLOCK, BLOCK)[..., order].reshape(n, k)
    code = code.reshape(n, k // BLOCK, BLOCK)[..., order]
    codes = (code[..., :BLOCK // 2] | (code[..., BLOCK // 2:] << 4)).reshape(n, k // 2)
    return lo, codes, exception


def pack(wt) -> PackedWeights:
    """``wt`` (out, in) bf16 (:func:`packable`) in 12 bits per weight; :func:`unpack` gives it back
    bit for bit. Codes go to the matrix's 15 most common high bytes."""
    if not packable(wt):
        raise ValueError(f"pack: expects a 2-D bfloat16 matrix whose last dim is a positive multiple of {BLOCK}, "
                         f"got {getattr(wt, 'dtype', type(wt))} {getattr(wt, 'shape', '')}")
    wt = jnp.asarray(wt)
    bits = np.asarray(jax.lax.bitcast_convert_type(wt, jnp.uint16))
    counts = np.bincount((bits >> 8).ravel(), minlength=256)
    common = np.argsort(-counts, kind="stable")[:EXCEPTION]
    common = common[counts[common] > 0]
    code_of = np.full(256, EXCEPTION, np.uint8)
    code_of[common] = np.arange(len(common), dtype=np.uint8)
    table = np.zeros(16, np.uint8)
    table[:len(common)] = common
    lo, codes, exception = _split_bytes(wt, jnp.asarray(code_of))
    where = np.flatnonzero(np.asarray(exception))
    n, k = wt.shape
    rows, cols = np.divmod(where, k)
    eptr = np.zeros(n + 1, np.int32)
    np.cumsum(np.bincount(rows, minlength=n), out=eptr[1:])
    evals = jnp.asarray(bits.ravel()[where]).view(jnp.bfloat16) if len(where) else jnp.zeros((0,), jnp.bfloat16)
    return PackedWeights(lo, codes, jnp.asarray(table), jnp.asarray(eptr), jnp.asarray(cols.astype(np.int32)),
                         jnp.asarray(evals, jnp.bfloat16))


def unpack(p: PackedWeights):
    """The bf16 matrix (out, in) :func:`pack` was given."""
    n, k = p.shape
    back = jnp.asarray(POSITION_OF_COLUMN)
    lo = p.lo.reshape(n, k // BLOCK, BLOCK)[..., back].reshape(n, k).astype(jnp.uint16)
    codes = p.codes.reshape(n, k // BLOCK, BLOCK // 2)
    code = jnp.concatenate([codes & 0xF, codes >> 4], axis=-1)[..., back].reshape(n, k)
    bits = lo | (p.table[code.astype(jnp.int32)].astype(jnp.uint16) << 8)
    if p.ecol.shape[0]:
        rows = jnp.searchsorted(p.eptr, jnp.arange(p.ecol.shape[0], dtype=jnp.int32), side="right") - 1
        bits = bits.at[rows, p.ecol].set(jax.lax.bitcast_convert_type(p.evals, jnp.uint16))
    return jax.lax.bitcast_convert_type(bits, jnp.bfloat16)


def used_for(x) -> bool:
    """Whether a product with this ``x`` runs on the kernel (decided at trace time)."""
    return (x.dtype == jnp.bfloat16 and cpu_gemv.rows_of(x) <= MAX_ROWS
            and jax.default_backend() == "cpu" and available())


def dot(x, p: PackedWeights):
    """``x @ w.T`` for x (..., in) and ``w`` (out, in) packed, summed and returned in fp32."""
    if not used_for(x):
        return cpu_gemv.xla_dot_t(x, unpack(p).astype(x.dtype))
    n = p.shape[0]
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((cpu_gemv.rows_of(x), n), jnp.float32),
                            vmap_method="sequential")
    return call(x.reshape(-1, x.shape[-1]), *p).reshape(*x.shape[:-1], n)
