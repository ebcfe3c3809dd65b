"""Attention of one query position over a KV cache (a decoding step) as an XLA custom call.

Why: XLA:CPU runs a decoding step's attention as batched dots over (batch, key/value head)
whose batch layout is not the cache's, so it copies the whole cache into a transposed buffer
twice per layer and token, then runs many tiny products: at a 600-position cache this cost more
than reading the layer's weights (experiments/janus_pro_speed.md). ``attend`` reads each
cache row once, with the arithmetic of ``layers.dot_product_attention`` (fp32 logits and
softmax, probabilities rounded to the values' dtype, fp32 sums). The LLM uses it for steps of
one query position under ``attention_impl="cpu_decode"``, which the decoders choose on CPU
(``sample/layout.decoding_model``); everything else stays on XLA. Its gradient is the XLA
path's.

Built on first use by ``kernels/build.py`` (g++, AVX-512 F/BW; one library with the product
kernel, sharing its threads). Where it cannot be, ``attend`` is XLA's, and the first call says
why in one line on stderr.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from janusflow.kernels.build import register_avx512
from janusflow.models.layers import dot_product_attention

TARGET = "janusflow_decode_attention"


@functools.cache
def available() -> bool:
    """Build, check the CPU and register the handler on the first call; False (said once on
    stderr) if it cannot be used here."""
    return register_avx512("cpu_decode_attention", "JanusflowDecodeAttention", TARGET, "XLA's attention")


def used_for(q, k, v) -> bool:
    """One query position, a head width of 16s, one dtype, on CPU with the kernel built."""
    return (q.shape[1] == 1 and q.shape[-1] % 16 == 0 and q.dtype == k.dtype == v.dtype
            and q.dtype in (jnp.float32, jnp.bfloat16) and jax.default_backend() == "cpu" and available())


def xla_attend(q, k, v, valid):
    return dot_product_attention(q, k, v, valid[:, None, None, :])


@jax.custom_vjp
def attend(q, k, v, valid):
    """q (B, 1, H, hd), k/v (B, S, K, hd) of q's dtype, valid (B, S) bool -> (B, 1, H, hd).
    Call only where :func:`used_for` holds."""
    b, _, h, hd = q.shape
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((b, h, hd), q.dtype), vmap_method="sequential")
    return call(q.reshape(b, h, hd), k, v, valid).reshape(b, 1, h, hd)


def _attend_fwd(q, k, v, valid):
    return attend(q, k, v, valid), (q, k, v, valid)


def _attend_bwd(res, g):
    q, k, v, valid = res
    _, vjp = jax.vjp(lambda q, k, v: xla_attend(q, k, v, valid), q, k, v)
    return (*vjp(g), None)


attend.defvjp(_attend_fwd, _attend_bwd)
