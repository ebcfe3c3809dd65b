"""Rectified-flow image sampling with classifier-free guidance and a reused prompt KV cache.

One compiled program per batch shape runs the whole sampler: prefill the prompts once, then
``steps`` ODE steps (``lax.fori_loop``) that each feed only the 1 + N new positions (t_emb slot
and image tokens) against the cached prefix. The official demo recomputes the prompt at every
step and casts t and z to bf16; here z and t stay fp32 whatever the model's compute dtype.

Rows of one call come in (conditional, unconditional) pairs, interleaved: row 2i is sample i
with its prompt, row 2i+1 the same prompt under :func:`uncond_prompt_mask` (BOS only, same
positions). Interleaving keeps both rows of a pair in the same batch shard, so splitting the
batch over a mesh needs no communication for the guidance mix
``v = w * v_cond - (w - 1) * v_uncond``.

Prompts of different lengths are left-padded (pad id, mask 0) to a bucketed length. The LLM
places tokens at consecutive positions, so left padding shifts a prompt, its t_emb slot and its
image tokens by the same offset; RoPE only sees relative offsets, so the result matches the
unpadded prompt up to float rounding. Bucketing (multiples of 16) bounds recompilation.

Noise is drawn per image from ``fold_in(key(seed), image index)``, so an image does not depend
on the batch it was sampled in, and a rerun can sample only the images still missing.
"""

from __future__ import annotations

import operator
from functools import partial
from typing import Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from janusflow.configs.schema import ModelConfig
from janusflow.models.llm import KVCache
from janusflow.models.vae import decode_latents
from janusflow.objectives.cfg_dropout import uncond_prompt_mask
from janusflow.objectives.flow import euler_step, heun_step, time_grid
from janusflow.parallel.rules import BATCH_AXES, param_shardings

SOLVERS = ("euler", "heun")
PAD_BUCKET = 16


# ------------------------------------------------------------------------------- validation
def latent_shape(cfg: ModelConfig) -> tuple[int, int, int]:
    return (cfg.latent_size, cfg.latent_size, cfg.vae.channels)


def max_prompt_len(cfg: ModelConfig) -> int:
    """Longest prompt (without the generation tag) that leaves room for t_emb + N image tokens."""
    return cfg.llm.max_position_embeddings - 1 - cfg.num_gen_tokens


def check_prompts(cfg: ModelConfig, prompt_ids) -> list[tuple[int, ...]]:
    """Validated prompts as tuples of ints; raises ValueError naming the offending prompt."""
    if isinstance(prompt_ids, (str, bytes)) or not isinstance(prompt_ids, Sequence):
        raise ValueError(f"prompt_ids must be a list of token-id lists, got {type(prompt_ids).__name__}")
    if len(prompt_ids) == 0:
        raise ValueError("prompt_ids is empty: pass at least one prompt")
    limit, vocab = max_prompt_len(cfg), cfg.llm.vocab_size
    out = []
    for i, p in enumerate(prompt_ids):
        try:
            p = tuple(operator.index(x) for x in p)
        except TypeError:
            raise ValueError(f"prompt {i} must be a list of int token ids, got {p!r:.80}") from None
        if not p:
            raise ValueError(f"prompt {i} is empty: a generation prompt needs at least BOS")
        if len(p) > limit:
            raise ValueError(
                f"prompt {i} has {len(p)} tokens; with the t_emb slot and {cfg.num_gen_tokens} image "
                f"tokens it needs {len(p) + 1 + cfg.num_gen_tokens} positions but the model context "
                f"is {cfg.llm.max_position_embeddings} (longest prompt: {limit} tokens)")
        bad = [x for x in p if not 0 <= x < vocab]
        if bad:
            raise ValueError(f"prompt {i} has token ids outside the vocabulary [0, {vocab}): {bad[:5]}")
        out.append(p)
    return out


def check_options(steps, cfg_weight, solver, num_samples=1):
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if not np.isfinite(cfg_weight) or cfg_weight < 0:
        raise ValueError(f"cfg_weight must be a finite number >= 0 (1 = no guidance), got {cfg_weight!r}")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")


def initial_noise(cfg: ModelConfig, seed: int, indices) -> jax.Array:
    """z0 ~ N(0, I) fp32 of shape (len(indices), latent, latent, C); image ``i`` always gets
    the same noise for a given seed, whatever else is sampled with it."""
    key, shape = jax.random.key(seed), latent_shape(cfg)
    idx = jnp.asarray(np.asarray(indices, np.uint32))
    return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32))(idx)


def pad_prompts(prompts: Sequence[Sequence[int]], length: int, pad_id: int = 0):
    """Left-pad to ``length``: (ids int32 (B, length), mask bool (B, length))."""
    ids = np.full((len(prompts), length), pad_id, np.int32)
    mask = np.zeros((len(prompts), length), bool)
    for r, p in enumerate(prompts):
        ids[r, length - len(p):] = p
        mask[r, length - len(p):] = True
    return ids, mask


def bucket_len(n: int, limit: int) -> int:
    return min(-(-n // PAD_BUCKET) * PAD_BUCKET, limit)


# ------------------------------------------------------------------------- compiled program
def constrain_batch(x, mesh, axis=0):
    if mesh is None:
        return x
    spec = [None] * x.ndim
    spec[axis] = BATCH_AXES
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(*spec)))


@partial(jax.jit, static_argnames=("graphdef", "steps", "solver", "use_cache", "mesh"))
def integrate(graphdef, state, ids, mask, z0, cfg_weight, *, steps, solver, use_cache, mesh=None):
    """ids, mask (B, L) left-padded prompts; z0 (B, h, w, C) -> z at t = 1, fp32."""
    model = nnx.merge(graphdef, state)
    lm, cfg = model.language_model, model.cfg
    b, length = ids.shape
    ids2 = jnp.repeat(ids, 2, axis=0)
    mask2 = jnp.stack([mask, uncond_prompt_mask(mask)], axis=1).reshape(2 * b, length)
    embeds = constrain_batch(lm.embed(ids2), mesh)
    if use_cache:
        cache = KVCache.init(cfg.llm, 2 * b, length + 1 + cfg.num_gen_tokens, embeds.dtype)
        prefix = lm(embeds, attention_mask=mask2, cache=cache, start=0).cache
        prefix = jax.tree.map(lambda a: constrain_batch(a, mesh, 1 if a.ndim == 5 else 0), prefix)

        def rows_velocity(z2, t2):
            return model.generate_velocity(None, None, z2, t2, cache=prefix, start=length).velocity
    else:
        def rows_velocity(z2, t2):
            return model.generate_velocity(embeds, mask2, z2, t2).velocity

    w = cfg_weight.astype(jnp.float32)

    def velocity(z, t):
        z2 = constrain_batch(jnp.repeat(z, 2, axis=0), mesh)
        v = rows_velocity(z2, jnp.full((2 * b,), t, jnp.float32)).reshape((b, 2) + z.shape[1:])
        return w * v[:, 0] - (w - 1.0) * v[:, 1]

    ts, dt = time_grid(steps)

    def body(k, z):
        t = ts[k]
        if solver == "euler":
            z, _ = euler_step(z, velocity(z, t), t, dt)
        else:
            z, _ = heun_step(z, t, dt, velocity)
        return z

    return jax.lax.fori_loop(0, steps, body, z0.astype(jnp.float32))


@partial(jax.jit, static_argnames=("graphdef", "vae_cfg"))
def decode_images(graphdef, state, z, *, vae_cfg):
    x = decode_latents(nnx.merge(graphdef, state), vae_cfg, z).astype(jnp.float32)
    # the official demo's conversion: clip to [-1, 1], then truncate (x + 1) / 2 * 255
    return ((jnp.clip(x, -1.0, 1.0) + 1.0) / 2.0 * 255.0).astype(jnp.uint8)


def split_for_mesh(module, mesh):
    graphdef, state = nnx.split(module)
    if mesh is not None:
        pure = nnx.to_pure_dict(state)
        return graphdef, jax.device_put(pure, param_shardings(state, mesh))
    return graphdef, state


def put_batch(x, mesh):
    x = jnp.asarray(x)
    if mesh is None:
        return x
    return jax.device_put(x, NamedSharding(mesh, P(BATCH_AXES, *([None] * (x.ndim - 1)))))


def batch_divisor(mesh) -> int:
    return 1 if mesh is None else int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def batch_plan(prompts, owner, batch_size, mesh):
    """(images per batch, that padded to a multiple of the mesh's batch axes, the image order:
    by prompt length, so a batch holds prompts of similar length). ``owner[i]``: image i's prompt."""
    if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    total = len(owner)
    div = batch_divisor(mesh)
    bs = min(batch_size or total, total)
    return bs, -(-bs // div) * div, sorted(range(total), key=lambda i: len(prompts[owner[i]]))


# ------------------------------------------------------------------------------- public API
def iter_generate(model, vae, cfg: ModelConfig, prompt_ids, *, num_samples: int = 1,
                  cfg_weight: float = 2.0, steps: int = 30, seed: int = 0, noise=None,
                  solver: str = "euler", decode: bool = True, batch_size: Optional[int] = None,
                  mesh=None, use_cache: bool = True, pad_id: int = 0, noise_ids=None,
                  progress: bool = False) -> Iterator[tuple[list[int], np.ndarray, Optional[np.ndarray]]]:
    """Stream :func:`generate` batch by batch: yields (image indices, latents (n, h, w, C) fp32,
    uint8 images (n, H, W, 3) or None when ``decode=False``). Image ``i`` is sample
    ``i % num_samples`` of prompt ``i // num_samples``. Batches group prompts of similar length,
    so indices arrive out of order; at most ``batch_size`` images are in flight.
    ``noise_ids``: per image, the index its seeded noise is drawn for (default: its own index),
    so a resumed run can sample a subset and get the images a full run would have made."""
    prompts = check_prompts(cfg, prompt_ids)
    check_options(steps, cfg_weight, solver, num_samples)
    if decode and vae is None:
        raise ValueError("decoding images needs a VAE (pass vae=..., or return_latents=True)")
    owner = [p for p in range(len(prompts)) for _ in range(num_samples)]
    total = len(owner)
    if noise is not None:
        noise = np.asarray(noise, np.float32)
        if noise.shape != (total,) + latent_shape(cfg):
            raise ValueError(f"noise must have shape {(total,) + latent_shape(cfg)} "
                             f"(prompts x samples, latent, latent, channels), got {noise.shape}")
    if noise_ids is not None and len(noise_ids) != total:
        raise ValueError(f"noise_ids must give one index per image ({total}), got {len(noise_ids)}")
    bs, bs_padded, order = batch_plan(prompts, owner, batch_size, mesh)
    graphdef, state = split_for_mesh(model, mesh)
    if decode:
        vae_graphdef, vae_state = split_for_mesh(vae, mesh)
        vae_cfg = getattr(vae, "cfg", cfg.vae)
    weight = jnp.asarray(cfg_weight, jnp.float32)
    bar = _progress_bar(total, progress)
    try:
        for s in range(0, total, bs):
            idx = order[s:s + bs]
            batch = [prompts[owner[i]] for i in idx]
            length = bucket_len(max(map(len, batch)), max_prompt_len(cfg))
            fill = idx + [idx[0]] * (bs_padded - len(idx))      # fixed shapes: one compile
            ids, mask = pad_prompts([prompts[owner[i]] for i in fill], length, pad_id)
            if noise is not None:
                z0 = noise[fill]
            else:
                z0 = initial_noise(cfg, seed, fill if noise_ids is None else [noise_ids[i] for i in fill])
            z = integrate(graphdef, state, put_batch(ids, mesh), put_batch(mask, mesh),
                           put_batch(z0, mesh), weight, steps=steps, solver=solver,
                           use_cache=use_cache, mesh=mesh)
            images = None
            if decode:
                images = np.asarray(decode_images(vae_graphdef, vae_state, z, vae_cfg=vae_cfg))[:len(idx)]
            yield idx, np.asarray(z)[:len(idx)], images
            bar.update(len(idx))
    finally:
        bar.close()


def generate(model, vae, cfg: ModelConfig, prompt_ids, *, cfg_weight: float = 2.0,
             steps: int = 30, seed: int = 0, noise=None, solver: str = "euler",
             return_latents: bool = False, batch_size: Optional[int] = None, mesh=None,
             progress: bool = True, num_samples: int = 1, use_cache: bool = True,
             pad_id: int = 0) -> np.ndarray:
    """Sample images from text prompts by integrating dz/dt = v from t = 0 (noise) to t = 1.

    ``prompt_ids``: one list of token ids per prompt: ``BOS User: {prompt}\\n\\nAssistant:``
    exactly as tokenised, *without* the generation tag token that follows it in the official
    sequence (``janusflow.data.tokenizer.generation_prompt_ids`` returns this); the t_emb takes
    that slot. Every prompt gets ``num_samples`` images; output row ``i`` is sample
    ``i % num_samples`` of prompt ``i // num_samples``.

    ``cfg_weight`` w: v = w * v_cond - (w - 1) * v_uncond (1 = no guidance). ``steps``: ODE steps
    on the grid t_k = k / steps (``flow.time_grid``); ``solver`` "euler" (official) or "heun"
    (two velocity evaluations per step). ``noise``: explicit z0 of shape (prompts x samples,
    latent, latent, C); otherwise drawn from ``seed`` per image (see :func:`initial_noise`).
    ``batch_size``: images per compiled call (each is two LLM rows with CFG); long prompt lists
    are streamed in such batches. ``mesh``: shard the batch over its ('data', 'fsdp') axes.
    ``use_cache=False`` recomputes the prompt at every step (reference path for tests and
    benchmarks).

    Returns uint8 images (B, H, W, 3), or the final latents (B, h, w, C) fp32 when
    ``return_latents`` (then ``vae`` may be None).
    """
    out = None
    for idx, z, images in iter_generate(
            model, vae, cfg, prompt_ids, num_samples=num_samples, cfg_weight=cfg_weight,
            steps=steps, seed=seed, noise=noise, solver=solver, decode=not return_latents,
            batch_size=batch_size, mesh=mesh, use_cache=use_cache, pad_id=pad_id,
            progress=progress):
        part = z if return_latents else images
        if out is None:
            out = np.empty((len(prompt_ids) * num_samples,) + part.shape[1:], part.dtype)
        out[idx] = part
    return out


class _TextProgress:
    """Fallback when tqdm is not installed: one stderr line per finished batch."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled = total, 0, enabled

    def update(self, n: int):
        self.done += n
        if self.enabled:
            import sys
            print(f"sampling: {self.done}/{self.total} images", file=sys.stderr, flush=True)

    def close(self):
        pass


def _progress_bar(total: int, enabled: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _TextProgress(total, enabled)
    return tqdm(total=total, unit="img", desc="sampling", disable=not enabled)


def with_compute_dtype(model, cfg: ModelConfig, dtype: str):
    """The same parameters in a model built for another compute dtype ("float32"/"bfloat16")."""
    import dataclasses

    from janusflow.models.build import abstract_model
    if dtype == cfg.dtype:
        return model, cfg
    new_cfg = dataclasses.replace(cfg, dtype=dtype)
    fresh = abstract_model(new_cfg)
    nnx.update(fresh, nnx.state(model))
    return fresh, new_cfg
