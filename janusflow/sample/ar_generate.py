"""Janus-Pro image generation: image tokens sampled one at a time with classifier-free guidance
on the logits (official ``generation_inference.py``), then decoded by the VQ tokenizer.

One compiled program per batch shape: prefill the prompts once into the KV cache, then a
``lax.fori_loop`` over the ``num_gen_tokens`` image tokens, each step feeding only the token just
sampled. Rows come in (conditional, unconditional) pairs, interleaved as in the flow sampler
(``sample/generate.py``). The unconditional row is the official one, not JanusFlow's: it keeps
the prompt's first token (BOS) and its last (``<begin_of_image>``), replaces every token between
by ``pad_id``, and attends to those pads (they are real positions, not masked). Guidance:
``logits = uncond + w * (cond - uncond)`` (official defaults w = 5, temperature 1).

Prompts of different lengths are left-padded to a bucketed length; the bucket padding is masked
(an official batch holds one prompt, so it has none). Each image draws its tokens from
``fold_in(fold_in(key(seed), image index), step)``: an image does not depend on the batch it
was sampled in.

The loop runs the LLM one layer after the other on per-layer weights and a per-layer KV cache
(``KVCache.init(per_layer=True)``, each layer's buffer updated in place): a model with stacked
(scanned) layers is relaid out first (``layout.per_layer_model``). Under ``lax.scan`` XLA:CPU slices
each layer's weights out of the stack into a fresh buffer before its matmuls, on every token;
at batch 1 the step is matrix-vector products bound by reading the weights, and those copies
made it ~1.5x slower. A stacked cache was likewise copied several times a token, which grows
with the position. On CPU the step's products (2 rows per image) run on our AVX-512 kernel,
which streams the weights where XLA's dot fell short, against the dense weights kept as
(out, in) (``layout.decoding_model``, experiments/janus_pro_speed.md, #26).
"""

from __future__ import annotations

from functools import partial
from typing import Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from janusflow.configs.schema import ModelConfig
from janusflow.configs.variants import AUTOREGRESSIVE
from janusflow.models.llm import KVCache
from janusflow.sample.generate import (batch_plan, bucket_len, constrain_batch, pad_prompts, put_batch,
                                       split_for_mesh)
from janusflow.sample.layout import decoding_model

OFFICIAL_CFG_WEIGHT = AUTOREGRESSIVE.cfg_weight      # the official generation script's
OFFICIAL_TEMPERATURE = 1.0


def uncond_prompt_ids(ids, mask, pad_id: int):
    """The official unconditional rows: each row's first and last real token kept, the real
    tokens between them replaced by ``pad_id`` (left padding stays as it is). numpy in, numpy
    out (the data pipeline makes training's CFG-dropout rows with it); jax arrays likewise."""
    xp = np if isinstance(ids, np.ndarray) and isinstance(mask, np.ndarray) else jnp
    mask = mask.astype(bool)
    rank = xp.cumsum(mask, axis=1)
    first = mask & (rank == 1)
    last = xp.arange(ids.shape[1])[None] == ids.shape[1] - 1          # prompts are left-padded
    return xp.where(mask & ~first & ~last, pad_id, ids).astype(ids.dtype)


def uncached_guided_logits(model, tokens, fed, weight: float, steps: int):
    """The official CFG loop's guided image-token logits for the first ``steps`` tokens,
    recomputed without a cache (the parity reference): ``tokens`` holds the (cond, uncond)
    prompt rows interleaved, ``fed`` one row of codes per image, each fed to its row pair;
    every row attends to every earlier position, pads included, as the official loop does."""
    text = model.language_model.embed(jnp.asarray(tokens))
    fed2 = jnp.repeat(jnp.asarray(fed), 2, axis=0)
    out = []
    for i in range(steps):
        seq = jnp.concatenate([text, model.gen_image_embeds(fed2[:, :i])], axis=1)
        logits = model.image_logits(model.language_model(seq).hidden[:, -1])
        cond, uncond = logits[0::2], logits[1::2]
        out.append(uncond + weight * (cond - uncond))
    return jnp.stack(out, 1)


@partial(jax.jit, static_argnames=("graphdef", "num_tokens", "mesh"))
def sample_codes(graphdef, state, ids, mask, image_keys, cfg_weight, temperature, pad_id, *,
                 num_tokens: int, mesh=None):
    """ids, mask (B, L) left-padded prompts ending in ``<begin_of_image>``; image_keys (B,)
    PRNG keys -> image codes (B, num_tokens) int32. Runs any layout; fast in the decoders'
    (``layout.decoding_layout``)."""
    model = nnx.merge(graphdef, state)
    lm = model.language_model
    b, length = ids.shape
    ids2 = jnp.stack([ids, uncond_prompt_ids(ids, mask, pad_id)], axis=1).reshape(2 * b, length)
    mask2 = jnp.repeat(mask, 2, axis=0)
    embeds = constrain_batch(lm.embed(ids2), mesh)
    cache = KVCache.init(model.cfg.llm, 2 * b, length + num_tokens, embeds.dtype, per_layer=not lm.scan)
    out = lm(embeds, attention_mask=mask2, cache=cache, start=0)
    w = cfg_weight.astype(jnp.float32)

    def pick(hidden, i):
        logits = model.image_logits(hidden).reshape(b, 2, -1)
        guided = logits[:, 1] + w * (logits[:, 0] - logits[:, 1])
        keys = jax.vmap(lambda k: jax.random.fold_in(k, i))(image_keys)
        return jax.vmap(jax.random.categorical)(keys, guided / temperature).astype(jnp.int32)

    def constrain_cache(c):          # stacked k/v (layers, B, ...): batch axis 1; per-layer ones and valid: 0
        return jax.tree.map(lambda a: constrain_batch(a, mesh, 1 if a.ndim == 5 else 0), c)

    first = pick(out.hidden[:, -1], 0)
    codes = jnp.zeros((b, num_tokens), jnp.int32).at[:, 0].set(first)

    def body(i, carry):
        tok, c, codes = carry
        e = model.gen_image_embeds(jnp.repeat(tok, 2)[:, None])
        o = lm(e, cache=c, start=length + i - 1)
        nxt = pick(o.hidden[:, -1], i)
        return nxt, constrain_cache(o.cache), codes.at[:, i].set(nxt)

    return jax.lax.fori_loop(1, num_tokens, body, (first, constrain_cache(out.cache), codes))[2]


@partial(jax.jit, static_argnames=("graphdef",))
def decode_codes(graphdef, state, codes):
    x = nnx.merge(graphdef, state).gen_vision.decode_codes(codes).astype(jnp.float32)
    # the official conversion: clip((x + 1) / 2 * 255, 0, 255), truncated to uint8
    return jnp.clip((x + 1.0) / 2.0 * 255.0, 0.0, 255.0).astype(jnp.uint8)


def image_keys(seed: int, indices) -> jax.Array:
    key = jax.random.key(seed)
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(np.asarray(indices, np.uint32)))


def check_ar_options(cfg: ModelConfig, prompts, cfg_weight, temperature, num_samples):
    if not cfg.head.autoregressive:
        raise ValueError(f"AR image sampling needs an autoregressive generation head (a janus_pro "
                         f"model), got gen_head {cfg.gen_head!r} (family {cfg.family!r})")
    if not prompts or any(len(p) < 2 for p in prompts):
        raise ValueError("each prompt needs at least BOS and <begin_of_image> (2 tokens)")
    if not np.isfinite(cfg_weight):
        raise ValueError(f"cfg_weight must be finite, got {cfg_weight}")
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if isinstance(num_samples, bool) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    longest = max(map(len, prompts)) + cfg.num_gen_tokens
    if longest > cfg.llm.max_position_embeddings:
        raise ValueError(f"prompt of {longest - cfg.num_gen_tokens} tokens + {cfg.num_gen_tokens} image "
                         f"tokens exceeds the model context {cfg.llm.max_position_embeddings}")


def iter_generate_ar(model, cfg: ModelConfig, prompt_ids: Sequence[Sequence[int]], *,
                     num_samples: int = 1, cfg_weight: float = OFFICIAL_CFG_WEIGHT,
                     temperature: float = OFFICIAL_TEMPERATURE, seed: int = 0, pad_id: int = 0,
                     decode: bool = True, batch_size: Optional[int] = None, mesh=None,
                     key_ids=None) -> Iterator[tuple[list[int], np.ndarray, Optional[np.ndarray]]]:
    """Yields (image indices, codes (n, N) int32, uint8 images (n, H, W, 3) or None) batch by
    batch. Image ``i`` is sample ``i % num_samples`` of prompt ``i // num_samples``; its random
    stream is that of index ``key_ids[i]`` (default ``i``). A model with stacked layers is
    relaid out per layer for the call, on CPU with the decoding kernel (``layout.decoding_model``)."""
    prompts = [tuple(int(t) for t in p) for p in prompt_ids]
    check_ar_options(cfg, prompts, cfg_weight, temperature, num_samples)
    owner = [p for p in range(len(prompts)) for _ in range(num_samples)]
    total = len(owner)
    if key_ids is not None and len(key_ids) != total:
        raise ValueError(f"key_ids must give one index per image ({total}), got {len(key_ids)}")
    bs, bs_padded, order = batch_plan(prompts, owner, batch_size, mesh)
    model, cfg = decoding_model(model, cfg)
    graphdef, state = split_for_mesh(model, mesh)
    limit = cfg.llm.max_position_embeddings - cfg.num_gen_tokens
    for s in range(0, total, bs):
        idx = order[s:s + bs]
        fill = idx + [idx[0]] * (bs_padded - len(idx))           # fixed shapes: one compile
        length = bucket_len(max(len(prompts[owner[i]]) for i in idx), limit)
        ids, mask = pad_prompts([prompts[owner[i]] for i in fill], length, pad_id)
        keys = image_keys(seed, fill if key_ids is None else [key_ids[i] for i in fill])
        codes = sample_codes(graphdef, state, put_batch(ids, mesh), put_batch(mask, mesh),
                             put_batch(keys, mesh), jnp.float32(cfg_weight), jnp.float32(temperature),
                             jnp.int32(pad_id), num_tokens=cfg.num_gen_tokens, mesh=mesh)
        images = np.asarray(decode_codes(graphdef, state, codes))[:len(idx)] if decode else None
        yield idx, np.asarray(codes)[:len(idx)], images


def generate_ar(model, cfg: ModelConfig, prompt_ids, *, return_codes: bool = False, **kw) -> np.ndarray:
    """All images (or codes) of :func:`iter_generate_ar`, in index order. ``prompt_ids``: per
    prompt the official sequence ``BOS <|User|>: {prompt}\\n\\n<|Assistant|>:<begin_of_image>`` as
    ids (``data.tokenizer.generation_prompt_ids``)."""
    out = None
    for idx, codes, images in iter_generate_ar(model, cfg, prompt_ids, decode=not return_codes, **kw):
        part = codes if return_codes else images
        if out is None:
            n = len(prompt_ids) * kw.get("num_samples", 1)
            out = np.empty((n,) + part.shape[1:], part.dtype)
        out[idx] = part
    return out
