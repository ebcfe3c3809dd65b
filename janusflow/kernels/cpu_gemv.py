"""Our AVX-512 matrix-vector product as an XLA custom call, for the few-row products of
decoding (one token of a batch-1 image with its CFG row: ``x`` of 2 rows).

Why: such a step reads every weight once for two multiply-adds, so its speed is the speed the
weights stream from memory, and XLA:CPU's dot streams bf16 weights far below this machine's
bandwidth (experiments/janus_pro_speed.md). ``matmul`` runs products whose ``x`` has at most
``MAX_ROWS`` rows on ``cpu_gemv.cc`` (fp32 or bf16 operands, fp32 sums) and every other product
on XLA's dot; its gradient is XLA's. ``ModelConfig.matmul_impl = "gemv"`` selects it for the
LLM's and SigLIP's dense layers.

``dot_t`` is the same product against weights stored transposed, ``wt`` (N, K) as torch's
(out, in), on ``cpu_gemv_t.cc``: one dot product per output over a contiguous row, faster at
decoding widths (experiments/janus_pro_speed.md); the decoders keep their weights that way
(``sample/layout.py``).

The handlers are compiled on first use by ``kernels/build.py`` with AVX-512 switches.
Off CPU, without a compiler, or on a CPU without AVX-512 (F and BW), ``matmul`` is XLA's dot,
and the first call says why in one line on stderr.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from janusflow.kernels.build import register_avx512

TARGET = "janusflow_gemv"
TARGET_T = "janusflow_gemv_t"
MAX_ROWS = 8      # above this a product is a GEMM: XLA's (or the vendor's) tiling wins


@functools.cache
def available() -> bool:
    """Build, check the CPU and register the handler on the first call; False (said once on
    stderr) if it cannot be used here."""
    return register_avx512("cpu_gemv", "JanusflowGemv", TARGET, "XLA's dot")


@functools.cache
def available_t() -> bool:
    """:func:`available` for the transposed layout's kernel (``dot_t``)."""
    return register_avx512("cpu_gemv_t", "JanusflowGemvT", TARGET_T, "XLA's dot")


def rows_of(x) -> int:
    return int(np.prod(x.shape[:-1], dtype=np.int64))


def used_for(x) -> bool:
    """Whether a product with this ``x`` (..., K) runs on the kernel (decided at trace time)."""
    return rows_of(x) <= MAX_ROWS and jax.default_backend() == "cpu" and available()


def used_for_t(x) -> bool:
    """:func:`used_for` for ``dot_t``."""
    return rows_of(x) <= MAX_ROWS and jax.default_backend() == "cpu" and available_t()


def xla_dot(x, w):
    return jnp.matmul(x, w, preferred_element_type=jnp.float32)


def xla_dot_t(x, wt):
    return jnp.einsum("...k,nk->...n", x, wt, preferred_element_type=jnp.float32)


@jax.custom_vjp
def dot(x, w):
    """``x @ w`` for x (..., K) and w (K, N) of one dtype (fp32 or bf16), summed and returned
    in fp32: on the kernel when ``x`` has at most ``MAX_ROWS`` rows, else XLA's dot."""
    if not used_for(x):
        return xla_dot(x, w)
    return kernel_call(TARGET, x, w, w.shape[1])


def kernel_call(target: str, x, w, n: int):
    """The FFI target on x (..., K) as one (rows, K) operand and ``w``: (..., n) fp32."""
    call = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct((rows_of(x), n), jnp.float32), vmap_method="sequential")
    return call(x.reshape(-1, x.shape[-1]), w).reshape(*x.shape[:-1], n)


def _dot_fwd(x, w):
    return dot(x, w), (x, w)


def _dot_bwd(res, g):
    # XLA's products, with the cotangent rounded to the operands' dtype (the vendor kernel's
    # and layers' rule for bf16) and fp32 sums.
    x, w = res
    g = g.astype(x.dtype)
    dx = jnp.einsum("...n,kn->...k", g, w, preferred_element_type=jnp.float32).astype(x.dtype)
    dw = jnp.einsum("...k,...n->kn", x, g, preferred_element_type=jnp.float32).astype(w.dtype)
    return dx, dw


dot.defvjp(_dot_fwd, _dot_bwd)


@jax.custom_vjp
def dot_t(x, wt):
    """``x @ wt.T`` for x (..., K) and wt (N, K) of one dtype, summed and returned in fp32: on
    ``cpu_gemv_t.cc`` when ``x`` has at most ``MAX_ROWS`` rows, else XLA's dot."""
    if not used_for_t(x):
        return xla_dot_t(x, wt)
    return kernel_call(TARGET_T, x, wt, wt.shape[0])


def _dot_t_fwd(x, wt):
    return dot_t(x, wt), (x, wt)


def _dot_t_bwd(res, g):
    x, wt = res
    g = g.astype(x.dtype)
    dx = jnp.einsum("...n,nk->...k", g, wt, preferred_element_type=jnp.float32).astype(x.dtype)
    dwt = jnp.einsum("...n,...k->nk", g, x, preferred_element_type=jnp.float32).astype(wt.dtype)
    return dx, dwt


dot_t.defvjp(_dot_t_fwd, _dot_t_bwd)


def bf16_dot_instruction() -> bool:
    """Whether ``dot_t``'s bf16 path runs on AVX512-BF16's dot product instruction here (else it
    widens bf16 to fp32 in registers); False where the kernel is unavailable."""
    if not available_t():
        return False
    import ctypes
    from janusflow.kernels.build import AVX512, DECODING_KERNELS, compile_library
    lib = ctypes.cdll.LoadLibrary(compile_library("cpu_decoding_kernels", DECODING_KERNELS, AVX512))
    return bool(lib.JanusflowGemvTBf16Dot())
