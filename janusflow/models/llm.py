"""LLaMA-architecture decoder (DeepSeek-LLM 1.3B), HF ``LlamaForCausalLM`` semantics.

One forward function serves training, prefill and incremental decoding: the caller passes
input embeddings (so images can be spliced in), a start position and optionally a KV cache.
The cache is a plain pytree returned by the call, never mutated in place, so the sampler can
prefill a prompt once and run every ODE step against the same cached prefix.

Attention goes through :func:`attention` only, which dispatches on ``attention_impl``
(``models/attention.py``: XLA, cuDNN on GPU, splash on TPU).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from janusflow.config import LLMConfig
from janusflow.models.attention import CausalPaddingMask, attend, causal_padding_mask
from janusflow.models.layers import Linear, RMSNorm, normal, param
from janusflow.parallel.rules import constrain

RESIDUAL = ("batch", "length", "embed")


class KVCache(NamedTuple):
    """Keys/values for ``max_len`` positions: k, v of shape (layers, B, max_len, kv_heads, head_dim);
    ``valid`` (B, max_len) marks positions that were written and not masked out."""
    k: jax.Array
    v: jax.Array
    valid: jax.Array

    @staticmethod
    def init(cfg: LLMConfig, batch: int, max_len: int, dtype=jnp.float32) -> "KVCache":
        if max_len > cfg.max_position_embeddings:
            raise ValueError(f"KV cache length {max_len} exceeds the model context "
                             f"{cfg.max_position_embeddings}")
        shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.dim_per_head)
        return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
                       jnp.zeros((batch, max_len), bool))

    @property
    def max_len(self) -> int:
        return self.k.shape[2]


class LLMOutput(NamedTuple):
    hidden: jax.Array                       # after the final norm, (B, T, D)
    layers: dict                            # {i: hidden state after block i (i=0: embeddings)}
    cache: Optional[KVCache]


def rope(x, positions, theta: float):
    """Rotary embedding, HF "rotate_half" layout: x (B, T, H, hd), positions (B, T)."""
    hd = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
    ang = positions.astype(jnp.float32)[..., None] * inv_freq            # (B, T, hd/2)
    ang = jnp.concatenate([ang, ang], axis=-1)[:, :, None, :]            # (B, T, 1, hd)
    cos, sin = jnp.cos(ang), jnp.sin(ang)
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
        q = constrain(self.q_proj(x).reshape(b, t, c.num_heads, c.dim_per_head),
                      ("batch", "length", "heads", "head_dim"))
        kv_axes = ("batch", "length", "kv_heads", "head_dim")
        k = constrain(self.k_proj(x).reshape(b, t, c.num_kv_heads, c.dim_per_head), kv_axes)
        v = constrain(self.v_proj(x).reshape(b, t, c.num_kv_heads, c.dim_per_head), kv_axes)
        q, k = rope(q, positions, c.rope_theta), rope(k, positions, c.rope_theta)
        new_kv = None
        if cache_kv is not None:
            ck, cv = cache_kv
            ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, start, 0, 0))
            cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, start, 0, 0))
            new_kv = (ck, cv)
            k, v = ck.astype(q.dtype), cv.astype(q.dtype)
        out = constrain(attention(q, k, v, mask, self.impl), ("batch", "length", "heads", "head_dim"))
        return constrain(self.o_proj(out.reshape(b, t, -1)), RESIDUAL), new_kv


class MLP(nnx.Module):
    def __init__(self, cfg: LLMConfig, *, rngs, dtype=None):
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = Linear(d, f, axes=("embed", "mlp"), use_bias=False, rngs=rngs, dtype=dtype)
        self.up_proj = Linear(d, f, axes=("embed", "mlp"), use_bias=False, rngs=rngs, dtype=dtype)
        self.down_proj = Linear(f, d, axes=("mlp", "embed"), use_bias=False, rngs=rngs, dtype=dtype)

    def __call__(self, x):
        h = constrain(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x), ("batch", "length", "mlp"))
        return constrain(self.down_proj(h), RESIDUAL)


class Block(nnx.Module):
    def __init__(self, cfg: LLMConfig, *, rngs, dtype=None, impl="xla"):
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, rngs=rngs)
        self.self_attn = Attention(cfg, rngs=rngs, dtype=dtype, impl=impl)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs, dtype=dtype)

    def __call__(self, x, positions, mask, cache_kv=None, start=None):
        h, new_kv = self.self_attn(self.input_layernorm(x), positions, mask, cache_kv, start)
        x = constrain(x + h, RESIDUAL)
        x = constrain(x + self.mlp(self.post_attention_layernorm(x)), RESIDUAL)
        return x, new_kv


_REMAT_POLICIES = {
    "block": None,  # save nothing inside a block: recompute it all in the backward pass
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class LLM(nnx.Module):
    def __init__(self, cfg: LLMConfig, *, rngs: nnx.Rngs, dtype=None, remat: str = "none",
                 attention_impl: str = "xla"):
        self.cfg, self.dtype, self.remat = cfg, dtype, remat
        self.embed_tokens = param(rngs, normal(0.02), (cfg.vocab_size, cfg.hidden_size),
                                  ("vocab", "embed"))
        self.layers = nnx.List([Block(cfg, rngs=rngs, dtype=dtype, impl=attention_impl)
                                for _ in range(cfg.num_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, rngs=rngs)
        self.lm_head = (None if cfg.tie_word_embeddings else
                        Linear(cfg.hidden_size, cfg.vocab_size, axes=("embed", "vocab"),
                               use_bias=False, rngs=rngs, dtype=dtype, init=normal(0.02)))

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
            out = hidden @ self.embed_tokens[...].astype(hidden.dtype).T
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
        layers = {0: x} if 0 in collect else {}
        new_k, new_v = [], []
        n_run = c.num_layers if stop_after is None else stop_after
        for i in range(n_run):
            blk = self.layers[i]
            kv = (cache.k[i], cache.v[i]) if cache is not None else None
            if self.remat != "none":
                fn = nnx.remat(lambda m, *a: m(*a), policy=_REMAT_POLICIES[self.remat])
                x, kv_out = fn(blk, x, positions, mask, kv, start)
            else:
                x, kv_out = blk(x, positions, mask, kv, start)
            if kv_out is not None:
                new_k.append(kv_out[0])
                new_v.append(kv_out[1])
            if i + 1 in collect:
                layers[i + 1] = x
        new_cache = None
        if cache is not None:
            k_rest = [cache.k[i] for i in range(n_run, c.num_layers)]
            v_rest = [cache.v[i] for i in range(n_run, c.num_layers)]
            new_cache = KVCache(jnp.stack(new_k + k_rest), jnp.stack(new_v + v_rest), valid)
        hidden = self.norm(x) if stop_after is None else x
        return LLMOutput(hidden, layers, new_cache)


def torch_key_map(cfg: LLMConfig, prefix: str = "") -> dict:
    """HF ``LlamaForCausalLM`` keys (``prefix`` = "language_model." inside JanusFlow)."""
    m = {f"{prefix}model.embed_tokens.weight": (("embed_tokens",), "plain"),
         f"{prefix}model.norm.weight": (("norm", "scale"), "plain")}
    if not cfg.tie_word_embeddings:
        m[f"{prefix}lm_head.weight"] = (("lm_head", "kernel"), "linear")
    for i in range(cfg.num_layers):
        p = f"{prefix}model.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            m[f"{p}self_attn.{n}.weight"] = (("layers", i, "self_attn", n, "kernel"), "linear")
        for n in ("gate_proj", "up_proj", "down_proj"):
            m[f"{p}mlp.{n}.weight"] = (("layers", i, "mlp", n, "kernel"), "linear")
        m[f"{p}input_layernorm.weight"] = (("layers", i, "input_layernorm", "scale"), "plain")
        m[f"{p}post_attention_layernorm.weight"] = (("layers", i, "post_attention_layernorm", "scale"), "plain")
    return m
