"""One LLaMA decoder block for one new position as a single XLA custom call (a decoding step).

Why: with the weights packed in 12 bits (``cpu_gemv_packed``) a token's products stream at the
memory's speed, and what is left of a step is XLA's ~20 small fusions per block between eight
kernel calls, whose hand-offs keep the kernels' threads waiting (experiments/janus_pro_speed.md).
``cpu_decode_block.cc`` runs the whole block (norms, the packed products, rope, the cache write,
attention, the MLP, the residuals) in one call, with the XLA path's bf16 roundings, writing the
new keys and values into the cache buffers in place (aliased operands).

The LLM uses it for steps of one position under ``attention_impl="cpu_block"`` when the block's
seven weights are packed (``layers.store_packed``), which the decoders choose on CPU
(``sample/layout.decoding_config``); everything else runs as ``"cpu_decode"``. Forward only.
Built on first use with the other decoding kernels (``kernels/build.py``); where it cannot be,
the block runs as its separate calls and the first call says why in one line on stderr. It runs
the packed products whatever the block's ``Linear.impl`` (packed weights only exist in the
decoders' layout, whose products are the packed kernel's).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from janusflow.kernels import cpu_gemv_packed
from janusflow.kernels.build import register_avx512

TARGET = "janusflow_decode_block"
MAX_ROWS = cpu_gemv_packed.MAX_ROWS      # rows of a step (images x 2 with CFG): the products' limit


@functools.cache
def available() -> bool:
    """Build, check the CPU and register the handler on the first call; False (said once on
    stderr) if it cannot be used here."""
    return register_avx512("cpu_decode_block", "JanusflowDecodeBlock", TARGET, "the block's separate calls")


def used_for(x, cache_k, cache_v, weights: Sequence) -> bool:
    """One bf16 position of at most :data:`MAX_ROWS` rows, a bf16 cache with a head width of
    16s, every weight packed, on CPU with the kernel built."""
    return (x.ndim == 3 and x.shape[1] == 1 and x.shape[0] <= MAX_ROWS and x.dtype == jnp.bfloat16
            and cache_k.dtype == cache_v.dtype == jnp.bfloat16 and cache_k.shape[-1] % 16 == 0
            and all(isinstance(w, cpu_gemv_packed.PackedWeights) for w in weights)
            and jax.default_backend() == "cpu" and available())


def block(x, norm1, norm2, cos, sin, valid, start, cache_k, cache_v, weights: Sequence, *, eps: float,
          heads: int):
    """x (B, 1, D) bf16; norm1/norm2 (D,) the norms' scales; cos/sin (B, hd) fp32 the rotary
    angles of the new position; valid (B, S) bool the positions it attends to (itself
    included); start the position it is written at; cache_k/v (B, S, K, hd) bf16; weights the
    packed q, k, v, o, gate, up, down (``cpu_gemv_packed.PackedWeights``, (out, in)). Returns
    (x (B, 1, D), cache_k, cache_v) with the new keys/values written at ``start``. Call only
    where :func:`used_for` holds."""
    b, _, d = x.shape
    call = jax.ffi.ffi_call(
        TARGET, (jax.ShapeDtypeStruct((b, d), x.dtype), jax.ShapeDtypeStruct(cache_k.shape, cache_k.dtype),
                 jax.ShapeDtypeStruct(cache_v.shape, cache_v.dtype)),
        input_output_aliases={7: 1, 8: 2}, vmap_method="sequential")
    parts = [a for w in weights for a in w]
    y, ck, cv = call(x.reshape(b, d), norm1.astype(x.dtype), norm2.astype(x.dtype), cos.astype(jnp.float32),
                     sin.astype(jnp.float32), valid.astype(bool), jnp.asarray(start, jnp.int32).reshape(()),
                     cache_k, cache_v, *parts, eps=np.float32(eps), heads=np.int64(heads))
    return y.reshape(b, 1, d), ck, cv
