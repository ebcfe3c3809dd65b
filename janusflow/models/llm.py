"""LLaMA-architecture decoder (DeepSeek-LLM 1.3B), HF ``LlamaForCausalLM`` semantics.

One forward function serves training, prefill and incremental decoding: the caller passes
input embeddings (so images can be spliced in), a start position and optionally a KV cache.
The cache is a plain pytree returned by the call, never mutated in place, so the sampler can
prefill a prompt once and run every ODE step against the same cached prefix.

Attention goes through :func:`attention` only, which dispatches on ``attention_impl``
(``models/attention.py``: XLA with fp32 accumulation, the fast bf16 path on CPU; cuDNN on GPU;
splash on TPU).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from janusflow.configs.schema import LLMConfig
from janusflow.kernels import cpu_decode_block
from janusflow.models import remat as remat_lib
from janusflow.models.attention import CausalPaddingMask, attend, causal_padding_mask
from janusflow.models.layer_stack import scan_layers, stack_layers
from janusflow.models.layers import Linear, RMSNorm, matmul, normal, param, use_matmul
from janusflow.parallel.rules import constrain

RESIDUAL = ("batch", "length", "embed")


class KVCache(NamedTuple):
    """Keys/values for ``max_len`` positions: k, v of shape (layers, B, max_len, kv_heads, head_dim),
    or (``per_layer``) tuples of one (B, max_len, kv_heads, head_dim) buffer per layer;
    ``valid`` (B, max_len) marks positions that were written and not masked out.

    Per-layer buffers are for the unrolled LLM's token-by-token decoding: each layer's new
    keys/values are written into its own buffer in place. With one stacked array XLA:CPU copied
    the layer's slice out, updated the copy and stacked the layers back, the whole cache several
    times per token (experiments/janus_pro_speed.md, #26). The scanned LLM takes either."""
    k: jax.Array | tuple
    v: jax.Array | tuple
    valid: jax.Array

    @staticmethod
    def init(cfg: LLMConfig, batch: int, max_len: int, dtype=jnp.float32, per_layer: bool = False) -> "KVCache":
        if max_len > cfg.max_position_embeddings:
            raise ValueError(f"KV cache length {max_len} exceeds the model context "
                             f"{cfg.max_position_embeddings}")
        valid = jnp.zeros((batch, max_len), bool)
        if per_layer:
            shape = (batch, max_len, cfg.num_kv_heads, cfg.dim_per_head)
            return KVCache(tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)),
                           tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)), valid)
        shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.dim_per_head)
        return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), valid)

    @property
    def max_len(self) -> int:
        return self.valid.shape[1]

    @property
    def per_layer(self) -> bool:
        return isinstance(self.k, tuple)


class LLMOutput(NamedTuple):
    hidden: jax.Array                       # after the final norm, (B, T, D)
    layers: dict                            # {i: hidden state after block i (i=0: embeddings)}
    cache: Optional[KVCache]


def rope_angles(positions, hd: int, theta: float):
    """(cos, sin) of the rotary angles, (B, T, hd) fp32 for positions (B, T)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
    ang = positions.astype(jnp.float32)[..., None] * inv_freq            # (B, T, hd/2)
    ang = jnp.concatenate([ang, ang], axis=-1)                           # (B, T, hd)
    return jnp.cos(ang), jnp.sin(ang)


def rope(x, positions, theta: float):
    """Rotary embedding, HF "rotate_half" layout: x (B, T, H, hd), positions (B, T)."""
    cos, sin = (a[:, :, None, :] for a in rope_angles(positions, x.shape[-1], theta))
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x.astype(jnp.float32) * cos + rotated * sin).astype(x.dtype)


def attention(q, k, v, mask, impl: str = "xla"):
    """q (B,T,H,hd), k/v (B,S,K,hd) with H % K == 0; mask a CausalPaddingMask (no KV cache) or
    (B,1,T,S) bool (True = attend)."""
    return attend(q, k, v, mask, impl)


class Attention(nnx.Module):
    def __init__(self, cfg: LLMConfig, *, rngs, dtype=None, impl="xla"):
        d, h, kv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.dim_per_head
        self.cfg, self.impl = cfg, impl
        self.q_proj = Linear(d, h * hd, axes=("embed", "heads"), use_bias=False, rngs=rngs, dtype=dtype)
        self.k_proj = Linear(d, kv * hd, axes=("embed", "kv_heads"), use_bias=False, rngs=rngs, dtype=dtype)
        self.v_proj = Linear(d, kv * hd, axes=("embed", "kv_heads"), use_bias=False, rngs=rngs, dtype=dtype)
        self.o_proj = Linear(h * hd, d, axes=("heads", "embed"), use_bias=False, rngs=rngs, dtype=dtype)

    def __call__(self, x, positions, mask, cache_kv=None, start=None):
        b, t, _ = x.shape
        c = self.cfg
        tag = remat_lib.tag
        q = constrain(tag(self.q_proj(x), remat_lib.QUERY).reshape(b, t, c.num_heads, c.dim_per_head),
                      ("batch", "length", "heads", "head_dim"))
        kv_axes = ("batch", "length", "kv_heads", "head_dim")
        k = constrain(tag(self.k_proj(x), remat_lib.KEY).reshape(b, t, c.num_kv_heads, c.dim_per_head), kv_axes)
        v = constrain(tag(self.v_proj(x), remat_lib.VALUE).reshape(b, t, c.num_kv_heads, c.dim_per_head), kv_axes)
        q, k = rope(q, positions, c.rope_theta), rope(k, positions, c.rope_theta)
        new_kv = None
        if cache_kv is not None:
            ck, cv = cache_kv
            ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, start, 0, 0))
            cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, start, 0, 0))
            new_kv = (ck, cv)
            k, v = ck.astype(q.dtype), cv.astype(q.dtype)
        out = constrain(attention(q, k, v, mask, self.impl), ("batch", "length", "heads", "head_dim"))
        return constrain(remat_lib.tag(self.o_proj(out.reshape(b, t, -1)), remat_lib.OUT), RESIDUAL), new_kv


def use_attention(module: nnx.Module, impl: str) -> None:
    """Run every LLM :class:`Attention` inside ``module`` with ``impl`` (ATTENTION_IMPLS)."""
    for _, m in nnx.iter_modules(module):
        if isinstance(m, Attention):
            m.impl = impl


class MLP(nnx.Module):
    def __init__(self, cfg: LLMConfig, *, rngs, dtype=None):
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = Linear(d, f, axes=("embed", "mlp"), use_bias=False, rngs=rngs, dtype=dtype)
        self.up_proj = Linear(d, f, axes=("embed", "mlp"), use_bias=False, rngs=rngs, dtype=dtype)
        self.down_proj = Linear(f, d, axes=("mlp", "embed"), use_bias=False, rngs=rngs, dtype=dtype)

    def __call__(self, x):
        tag = remat_lib.tag
        gate, up = tag(self.gate_proj(x), remat_lib.MLP_GATE), tag(self.up_proj(x), remat_lib.MLP_UP)
        h = constrain(jax.nn.silu(gate) * up, ("batch", "length", "mlp"))
        h = remat_lib.tag(h, remat_lib.MLP_HIDDEN)
        return constrain(remat_lib.tag(self.down_proj(h), remat_lib.MLP_OUT), RESIDUAL)


class Block(nnx.Module):
    def __init__(self, cfg: LLMConfig, *, rngs, dtype=None, impl="xla"):
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, rngs=rngs)
        self.self_attn = Attention(cfg, rngs=rngs, dtype=dtype, impl=impl)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs, dtype=dtype)

    def __call__(self, x, positions, mask, cache_kv=None, start=None):
        if cache_kv is not None and self.self_attn.impl == "cpu_block":
            weights = self.packed_weights()
            if weights is not None and cpu_decode_block.used_for(x, *cache_kv, weights):
                return self.decode_step(x, positions, mask, cache_kv, start, weights)
        h, new_kv = self.self_attn(self.input_layernorm(x), positions, mask, cache_kv, start)
        x = constrain(x + h, RESIDUAL)
        x = constrain(x + self.mlp(self.post_attention_layernorm(x)), RESIDUAL)
        return x, new_kv

    def packed_weights(self):
        """The seven weights q, k, v, o, gate, up, down if all are packed in 12 bits
        (``layers.store_packed``) and bias-free and both norms share one eps (the one-call
        step's conditions), else None."""
        a, m = self.self_attn, self.mlp
        linears = (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj)
        if (not all(lin.packed and lin.bias is None for lin in linears)
                or self.input_layernorm.eps != self.post_attention_layernorm.eps):
            return None
        return [lin.kernel_p.get_value() for lin in linears]

    def decode_step(self, x, positions, mask, cache_kv, start, weights):
        """This block for one position as one custom call (``kernels/cpu_decode_block.py``),
        the keys/values written into the cache in place."""
        c = self.self_attn.cfg
        b, s = x.shape[0], cache_kv[0].shape[1]
        cos, sin = rope_angles(positions, c.dim_per_head, c.rope_theta)
        valid = jnp.broadcast_to(mask, (b, 1, 1, s))[:, 0, 0]
        y, ck, cv = cpu_decode_block.block(
            x, self.input_layernorm.scale[...], self.post_attention_layernorm.scale[...], cos[:, 0], sin[:, 0],
            valid, start, cache_kv[0], cache_kv[1], weights, eps=self.input_layernorm.eps, heads=c.num_heads)
        return y, (ck, cv)


class LLM(nnx.Module):
    def __init__(self, cfg: LLMConfig, *, rngs: nnx.Rngs, dtype=None, remat: str = "none",
                 attention_impl: str = "xla", scan: bool = False, matmul_impl: str = "xla"):
        if remat != "none":
            remat_lib.policy(remat)          # an unknown name fails here, not at the first step
        self.cfg, self.dtype, self.remat, self.scan = cfg, dtype, remat, scan
        self.embed_tokens = param(rngs, normal(0.02), (cfg.vocab_size, cfg.hidden_size),
                                  ("vocab", "embed"))
        blocks = [Block(cfg, rngs=rngs, dtype=dtype, impl=attention_impl) for _ in range(cfg.num_layers)]
        # scan: one Block with stacked parameters (layer_stack.py); else one Block per layer
        self.layers = stack_layers(blocks) if scan else nnx.List(blocks)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, rngs=rngs)
        self.lm_head = (None if cfg.tie_word_embeddings else
                        Linear(cfg.hidden_size, cfg.vocab_size, axes=("embed", "vocab"),
                               use_bias=False, rngs=rngs, dtype=dtype, init=normal(0.02)))
        use_matmul(self, matmul_impl)

    def embed(self, ids):
        if ids.ndim != 2:
            raise ValueError(f"token ids must be (batch, length), got shape {ids.shape}")
        table = self.embed_tokens[...]
        x = jnp.take(table, ids, axis=0)
        # The table stays FSDP-sharded: the lookup gathers the token ids (4 bytes a token)
        # rather than the table (the vocab x hidden weight on every device).
        return constrain(x.astype(self.dtype or table.dtype), RESIDUAL)

    def logits(self, hidden):
        """(..., D) -> (..., vocab)."""
        if self.lm_head is None:
            out = matmul(hidden, self.embed_tokens[...].astype(hidden.dtype).T)
        else:
            out = self.lm_head(hidden)
        if out.ndim == 3:
            out = constrain(out, ("batch", "length", "vocab"))
        return out

    def __call__(self, embeds, *, attention_mask=None, start=0, cache: Optional[KVCache] = None,
                 collect: Sequence[int] = (), stop_after: Optional[int] = None) -> LLMOutput:
        """Run the decoder on ``embeds`` (B, T, D) placed at positions start .. start+T-1.

        attention_mask: (B, T) with 1/True for real tokens; masked positions are never attended
        to and see only themselves (their own outputs are meaningless). With ``cache`` the new keys/values are written at
        ``start`` and attention spans the whole cache (positions < start must have been
        written before). ``collect``: block indices whose outputs to return (i = after block i,
        0 = the embeddings). ``stop_after``: run only that many blocks (REPA-only passes).
        """
        c = self.cfg
        if embeds.ndim != 3 or embeds.shape[-1] != c.hidden_size:
            raise ValueError(f"embeds must be (batch, length, {c.hidden_size}), got {embeds.shape}")
        b, t, _ = embeds.shape
        limit = cache.max_len if cache is not None else c.max_position_embeddings
        if isinstance(start, int) and start + t > limit:
            raise ValueError(f"sequence of {t} tokens at position {start} exceeds the "
                             f"{'KV cache length' if cache is not None else 'model context'} {limit}")
        for i in collect:
            if not 0 <= i <= c.num_layers:
                raise ValueError(f"collect={i} is not a block index in 0..{c.num_layers}")
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), bool)
        if attention_mask.shape != (b, t):
            raise ValueError(f"attention_mask must be {(b, t)}, got {attention_mask.shape}")
        attention_mask = attention_mask.astype(bool)
        q_pos = start + jnp.arange(t)
        positions = jnp.broadcast_to(q_pos, (b, t))
        if cache is not None:
            valid = jax.lax.dynamic_update_slice(cache.valid, attention_mask, (0, start))
            mask = causal_padding_mask(attention_mask, valid, q_pos, jnp.arange(cache.max_len))
        else:
            # kept as the key mask: splash turns it into segment ids, XLA into the dense mask
            valid, mask = attention_mask, CausalPaddingMask(attention_mask)

        x = constrain(embeds.astype(self.dtype or embeds.dtype), RESIDUAL)
        n_run = c.num_layers if stop_after is None else stop_after
        run = self._scanned if self.scan else self._unrolled
        x, layers, new_kv = run(x, positions, mask, cache, start, n_run, collect)
        new_cache = None
        if cache is not None:
            # new_kv: per-layer lists (unrolled) or stacked arrays (scanned); layers not run keep theirs
            if cache.per_layer:
                new_cache = KVCache(tuple(new_kv[0]) + cache.k[n_run:], tuple(new_kv[1]) + cache.v[n_run:], valid)
            else:
                stacked = [jnp.stack(a) if isinstance(a, list) else a for a in new_kv]
                new_cache = KVCache(jnp.concatenate([stacked[0], cache.k[n_run:]]),
                                    jnp.concatenate([stacked[1], cache.v[n_run:]]), valid)
        hidden = self.norm(x) if stop_after is None else x
        return LLMOutput(hidden, layers, new_cache)

    def _unrolled(self, x, positions, mask, cache, start, n_run, collect):
        """Blocks 0..n_run-1 one by one: (x, {i: output of block i}, ([k per layer], [v per
        layer]) or None)."""
        layers = {0: x} if 0 in collect else {}
        step = remat_lib.call_block(self.remat)
        new_k, new_v = [], []
        for i in range(n_run):
            kv = (cache.k[i], cache.v[i]) if cache is not None else None
            x, kv_out = step(self.layers[i], x, positions, mask, kv, start)
            if kv_out is not None:
                new_k.append(kv_out[0])
                new_v.append(kv_out[1])
            if i + 1 in collect:
                layers[i + 1] = x
        return x, layers, ((new_k, new_v) if cache is not None else None)

    def _scanned(self, x, positions, mask, cache, start, n_run, collect):
        """The same with lax.scan over the stacked blocks, one scan per stretch between the
        blocks whose outputs ``collect`` asks for (REPA reads block ``repa_layer``); (k, v)
        stacked."""
        layers = {0: x} if 0 in collect else {}
        kv_all = None
        if cache is not None:
            kv_all = (jnp.stack(cache.k), jnp.stack(cache.v)) if cache.per_layer else (cache.k, cache.v)
        call = lambda blk, h, kv: blk(h, positions, mask, kv, start)        # noqa: E731
        ks, vs, lo = [], [], 0
        for hi in sorted({i for i in collect if 0 < i < n_run} | {n_run}):
            if hi > lo:
                x, kv_out = scan_layers(self.layers, x, call, start=lo, stop=hi, xs=kv_all,
                                        remat=self.remat)
                if kv_out is not None:
                    ks.append(kv_out[0])
                    vs.append(kv_out[1])
            if hi in collect:
                layers[hi] = x
            lo = hi
        return x, layers, ((jnp.concatenate(ks), jnp.concatenate(vs)) if cache is not None else None)

