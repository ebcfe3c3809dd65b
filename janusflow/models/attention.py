"""Attention kernels behind ``ModelConfig.attention_impl``.

``"xla"`` / ``"cudnn"`` / ``"auto"``: ``jax.nn.dot_product_attention`` with a dense boolean mask
(the default; cuDNN flash attention on GPU with ``"cudnn"``).
``"splash"``: the Pallas splash-attention kernel (TPU), which never builds the (T, S) mask or
the (T, S) scores in HBM and skips the key blocks a causal mask hides.

The masks the models build, and how splash expresses each one exactly:

- LLM self-attention without a KV cache (every training pass): causal over the row; a position
  whose ``attention_mask`` is False is hidden: no other position sees it and it sees only itself
  (its output is never read; seeing itself keeps its softmax from being empty, i.e. NaN).
  Rows are right-padded (understanding, text), left-padded (generation prompts, then the
  always-visible t_emb + image block) or have holes (a CFG-dropped prompt keeps BOS and hides
  the rest). Splash: a causal mask and segment ids 0 for visible tokens, 1 + position for hidden
  ones. A hidden token shares its id with no other token: the same boolean mask for any pattern
  of hidden positions.
- SigLIP self-attention: full, no padding. Splash: a full mask.
- Splash pads the length to a multiple of its 128-wide tiles with hidden positions (ids as
  above), sliced off after.
- The LLM with a KV cache (prefill and decoding in the samplers) passes a dense mask over the
  cache positions, and SigLIP's attention pool has one query: both stay on XLA under
  ``"splash"`` (the same mask, so the numbers do not depend on the impl).

``"cpu_decode"``: steps of one query position over a KV cache on our AVX-512 kernel
(:mod:`janusflow.kernels.cpu_decode_attention`, the same arithmetic as the XLA path), all else
as ``"xla"``. ``"cpu_block"``: the same, except that an LLM block whose weights are packed in 12
bits runs a step of one position as one custom call (:mod:`janusflow.kernels.cpu_decode_block`,
``llm.Block``). The decoders pick one of them on CPU (``sample/layout.decoding_config``).

Under :func:`~janusflow.parallel.rules.activation_sharding` (the train step) splash runs per
shard: ``shard_map`` over the batch and head axes the activation rules give q/k/v, with the
whole sequence on every shard (a rule sharding the length is refused).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from janusflow.configs.errors import ConfigError
from janusflow.kernels import cpu_decode_attention
from janusflow.models.layers import dot_product_attention
from janusflow.parallel.rules import activation_context, spec_for

# logical axes of q and of k/v, (batch, length, heads, head_dim), as the models constrain them
LLM_AXES = (("batch", "length", "heads", "head_dim"), ("batch", "length", "kv_heads", "head_dim"))
VIT_AXES = (("batch", "vit_length", "vit_heads", None),) * 2

LANES = 128                      # splash tiles are multiples of the TPU's 128 lanes
TILES = (512, 256, 128)          # the largest that divides the padded length is used

_INTERPRET = contextvars.ContextVar("janusflow_splash_interpret", default=False)


@contextlib.contextmanager
def splash_interpret():
    """Run the splash kernel in Pallas interpret mode (CPU tests; far too slow for anything else)."""
    token = _INTERPRET.set(True)
    try:
        yield
    finally:
        _INTERPRET.reset(token)


def causal_padding_mask(valid_q, valid_k, q_pos, k_pos):
    """(B, 1, T, S) bool, True = attend: a visible query (``valid_q`` (B, T)) sees the visible
    keys (``valid_k`` (B, S)) at or before its position; every query sees itself, so a hidden
    one sees only itself (an empty row would give NaN)."""
    mask = (k_pos[None, :] <= q_pos[:, None])[None] & valid_k[:, None, :] & valid_q[:, :, None]
    return (mask | (k_pos[None, :] == q_pos[:, None])[None])[:, None]


class CausalPaddingMask(NamedTuple):
    """Causal self-attention over whole rows with hidden (padded or dropped) positions: what the
    LLM passes when it runs without a KV cache. ``valid`` (B, T) bool."""
    valid: jax.Array

    def dense(self):
        pos = jnp.arange(self.valid.shape[1])
        return causal_padding_mask(self.valid, self.valid, pos, pos)


def segment_ids(valid):
    """(B, T) int32 splash segment ids equivalent to hiding the positions where ``valid`` is False:
    0 for visible tokens, 1 + position for each hidden one (a segment of its own)."""
    pos = jnp.arange(valid.shape[1], dtype=jnp.int32)
    return jnp.where(valid, 0, 1 + pos).astype(jnp.int32)


def attend(q, k, v, mask=None, impl: str = "xla", axes=LLM_AXES):
    """q (B, T, H, hd), k/v (B, S, K, hd) with H % K == 0 -> (B, T, H, hd).

    ``mask``: None (full attention), a :class:`CausalPaddingMask`, or a dense (B, 1, T, S) bool
    (True = attend). ``axes``: the logical axes of q and k/v (:data:`LLM_AXES`, :data:`VIT_AXES`),
    which place splash's shards."""
    if impl == "splash" and q.shape[1] == k.shape[1]:
        if isinstance(mask, CausalPaddingMask):
            return splash_attention(q, k, v, mask.valid, causal=True, axes=axes)
        if mask is None:
            return splash_attention(q, k, v, None, causal=False, axes=axes)
    if isinstance(mask, CausalPaddingMask):
        mask = mask.dense()
    if impl in ("cpu_decode", "cpu_block") and cpu_decode_attention.used_for(q, k, v):
        b, s = q.shape[0], k.shape[1]
        valid = jnp.ones((b, s), bool) if mask is None else jnp.broadcast_to(mask, (b, 1, 1, s))[:, 0, 0]
        return cpu_decode_attention.attend(q, k, v, valid)
    if impl in ("xla", "splash", "cpu_decode", "cpu_block"):   # fp32 accumulation: XLA:CPU's fast bf16 path (layers.py)
        return dot_product_attention(q, k, v, mask)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=None if impl == "auto" else impl)


def _tiles(block: int):
    from jax.experimental.pallas.ops.tpu.splash_attention import BlockSizes
    return BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                      block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                      block_q_dq=block, block_kv_dq=block)


def _splash_rows(q, k, v, seg, *, causal: bool, block: int, interpret: bool):
    """The kernel on the rows of one shard: q (b, T, h, hd), k/v (b, T, kh, hd), seg (b, T)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa
    t, h = q.shape[1], q.shape[2]
    kind = sa.CausalMask if causal else sa.FullMask
    kernel = sa.make_splash_mha(sa.MultiHeadMask([kind((t, t))] * h), head_shards=1,
                                q_seq_shards=1, block_sizes=_tiles(block), interpret=interpret)

    def row(q, k, v, s):             # the kernel takes (heads, length, head_dim)
        out = kernel(q.swapaxes(0, 1), k.swapaxes(0, 1), v.swapaxes(0, 1),
                     segment_ids=sa.SegmentIds(s, s))
        return out.swapaxes(0, 1)

    return jax.vmap(row)(q, k, v, seg)


def _shard_specs(q_shape, kv_shape, mesh, rules, axes):
    qs = spec_for(axes[0], q_shape, mesh, rules)
    ks = spec_for(axes[1], kv_shape, mesh, rules)
    if qs[1] is not None or ks[1] is not None:
        raise ConfigError(f"attention_impl='splash': the activation rules shard the sequence "
                          f"({axes[0][1]!r} -> {qs[1] or ks[1]!r}); splash needs whole rows per shard")
    if qs[2] != ks[2]:
        # q head j reads kv head j // (H / K): per-shard groups line up only when both split alike
        qs, ks = P(qs[0], None, None, None), P(ks[0], None, None, None)
    return qs, ks


def splash_attention(q, k, v, valid: Optional[jax.Array], *, causal: bool, axes=LLM_AXES):
    """Self-attention through splash: q (B, T, H, hd), k/v (B, T, K, hd), ``valid`` (B, T) bool
    or None (no hidden keys); causal or full. Same semantics as :func:`attend`'s XLA path."""
    b, t, _, hd = q.shape
    interpret = _INTERPRET.get()
    ctx = activation_context()
    platform = ctx[0].devices.flat[0].platform if ctx is not None else jax.default_backend()
    if platform != "tpu" and not interpret:
        raise ConfigError(f"attention_impl='splash' is a TPU kernel; these devices are {platform}: "
                          "use attention_impl='xla' (or 'cudnn' on GPU)")
    if valid is None:
        valid = jnp.ones((b, t), bool)
    padded = -(-t // LANES) * LANES
    block = next(s for s in TILES if padded % s == 0)
    seg = segment_ids(jnp.pad(valid.astype(bool), ((0, 0), (0, padded - t))))

    def pad(x):
        return jnp.pad(x, ((0, 0), (0, padded - t), (0, 0), (0, 0)))

    # the kernel does not scale the logits; jax.nn.dot_product_attention's default is 1/sqrt(hd)
    q = pad(q * jnp.asarray(hd ** -0.5, q.dtype))
    k, v = pad(k), pad(v)
    fn = functools.partial(_splash_rows, causal=causal, block=block, interpret=interpret)
    if ctx is not None:
        mesh, rules = ctx
        qs, ks = _shard_specs(q.shape, k.shape, mesh, rules, axes)
        fn = jax.shard_map(fn, mesh=mesh, in_specs=(qs, ks, ks, P(qs[0], None)), out_specs=qs,
                           check_vma=False)
    return fn(q, k, v, seg)[:, :t]
