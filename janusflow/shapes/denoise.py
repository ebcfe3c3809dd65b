"""What does the generator know at each t? One-step denoising of validation images.

A velocity model implies a clean-image estimate at every t (JanusFlow's convention: t=0 noise,
t=1 data, z_t = t*x + (1-t)*z0, v ~ x - z0):

    x_hat(z_t, t) = z_t + (1 - t) * v(z_t, t)

For validation images noised to several t, the grid shows z_t and x_hat side by side (one row
per t, the clean images on top), and ``mse`` gives mean((x_hat - x)^2) in pixel units ([-1, 1])
per t. Why this exists: the default run's samples are blobs, yet the same model, handed the
true layout under noise, may already draw crisp shapes at t >= 0.5; the grid tells a sampler or
low-t problem (good x_hat from real z_t, bad samples) from a denoiser that has not learnt the
shapes at all (bad x_hat everywhere).

The second view, :func:`trajectory_rows` / :func:`trajectory_report`, follows the sampler
instead of real images: the same Euler + CFG path the sampler takes from noise, showing x_hat
and z at chosen steps. It shows *when* a sample commits to its layout and whether the model's
estimate at t = 0 (pure noise, where the ideal x_hat is the prompt's mean image) already holds
objects read out of the noise.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

DEFAULT_TS = (0.1, 0.2, 0.3, 0.5, 0.7, 0.9)


def denoise_rows(velocity_fn: Callable, x, z0, ts: Sequence[float] = DEFAULT_TS):
    """``velocity_fn(z_t, t (n,)) -> v``, x and z0 (n, h, w, c) latents. Returns
    ``[(t, z_t, x_hat), ...]`` (numpy), one per t."""
    import jax.numpy as jnp
    if x.shape != z0.shape:
        raise ValueError(f"x {x.shape} and z0 {z0.shape} must have the same shape")
    out = []
    for tv in ts:
        if not 0.0 <= float(tv) < 1.0:
            raise ValueError(f"t must be in [0, 1), got {tv}")
        t = jnp.full((x.shape[0],), float(tv), jnp.float32)
        zt = float(tv) * x + (1.0 - float(tv)) * z0
        v = velocity_fn(zt, t)
        out.append((float(tv), np.asarray(zt), np.asarray(zt + (1.0 - float(tv)) * v)))
    return out


def trajectory_rows(velocity_fn: Callable, z0, steps: int = 30, cfg_weight: float = 2.0,
                    show: Sequence[int] = (0, 1, 3, 6, 9, 15, 24)):
    """Euler with CFG on the official grid t_k = k/steps, as the sampler integrates it.
    ``velocity_fn(z, t (n,), cond: bool) -> v``. Returns ``[(t_k, z_k, x_hat_k), ...]`` for the
    steps in ``show`` (x_hat_k = z_k + (1 - t_k) v_k, v the guided velocity) and the final
    ``(1.0, z, z)``."""
    import jax.numpy as jnp

    from janusflow.objectives.flow import euler_step, time_grid
    if not all(0 <= k < steps for k in show):
        raise ValueError(f"show must list steps in [0, {steps}), got {tuple(show)}")
    ts, dt = time_grid(steps)
    z, out = jnp.asarray(z0, jnp.float32), []
    for k in range(steps):
        t = jnp.full((z.shape[0],), ts[k], jnp.float32)
        v = velocity_fn(z, t, True)
        if cfg_weight != 1.0:
            v = cfg_weight * v - (cfg_weight - 1.0) * velocity_fn(z, t, False)
        if k in show:
            out.append((float(ts[k]), np.asarray(z), np.asarray(z + (1.0 - ts[k]) * v)))
        z, _ = euler_step(z, v, ts[k], dt)
    out.append((1.0, np.asarray(z), np.asarray(z)))
    return out


def _to_uint8(pixels) -> np.ndarray:
    return ((np.clip(np.asarray(pixels, np.float32), -1.0, 1.0) + 1.0) * 127.5).round().astype(np.uint8)


def grid(clean, rows, pad: int = 2) -> np.ndarray:
    """uint8 image: top row the clean images, then per t each example's z_t | x_hat pair.
    ``clean`` (n, H, W, 3) and the rows' arrays are pixels in [-1, 1]."""
    n, h, w, _ = clean.shape
    cell_w = 2 * w + pad                     # z_t | x_hat
    out = np.full(((len(rows) + 1) * (h + pad) + pad, n * (cell_w + 2 * pad) + pad, 3), 255, np.uint8)
    for r, pair in enumerate([(clean, clean)] + [(zt, xh) for _, zt, xh in rows]):
        y = pad + r * (h + pad)
        for i in range(n):
            x0 = pad + i * (cell_w + 2 * pad)
            out[y:y + h, x0:x0 + w] = _to_uint8(pair[0][i])
            out[y:y + h, x0 + w + pad:x0 + cell_w] = _to_uint8(pair[1][i])
    return out


def denoise_report(model, vae, cfg, *, n: int = 8, ts: Sequence[float] = DEFAULT_TS, seed: int = 0,
                   out_png: str | None = None) -> dict:
    """Run ``model`` on ``n`` validation examples of ``cfg``'s generation source with their own
    prompts; returns ``{"t": [...], "mse": [...], "n": n}`` (pixel units) and writes the grid
    to ``out_png`` if given."""
    import jax
    from flax import nnx

    from janusflow.shapes.conditioning import validation_batch
    from janusflow.models.vae import decode_latents
    from janusflow.train.step import vae_input
    mc = cfg.model
    if not mc.gen_enabled:
        raise ValueError("the denoising grid needs a model with a generation path (gen_enabled=False)")
    g = validation_batch(cfg, n, seed)["gen"]
    x = vae_input(vae, mc.vae, g, "images", "latents")
    z0 = jax.random.normal(jax.random.key(seed), x.shape, x.dtype)

    @nnx.jit
    def velocity(model, ids, mask, zt, t):
        return model.generate_velocity(model.language_model.embed(ids), mask, zt, t).velocity

    @nnx.jit
    def decode(vae, z):
        return decode_latents(vae, mc.vae, z)

    rows = denoise_rows(lambda zt, t: velocity(model, g["prompt_ids"], g["prompt_mask"], zt, t), x, z0, ts)
    clean = np.asarray(decode(vae, x), np.float32)
    px = [(t, np.asarray(decode(vae, zt), np.float32), np.asarray(decode(vae, xh), np.float32))
          for t, zt, xh in rows]
    report = {"t": [t for t, _, _ in px], "mse": [float(np.mean((xh - clean) ** 2)) for _, _, xh in px],
              "n": int(x.shape[0])}
    if out_png:
        from PIL import Image
        Image.fromarray(grid(clean, px)).save(out_png)
    return report


def trajectory_report(model, vae, mcfg, tokenizer, prompts: Sequence[str], *, steps: int = 30,
                      cfg_weight: float = 2.0, seed: int = 0, show: Sequence[int] = (0, 1, 3, 6, 9, 15, 24),
                      out_png: str | None = None) -> list:
    """:func:`trajectory_grid`, the grid written to ``out_png`` if given. Returns the shown t values."""
    ts, image = trajectory_grid(model, vae, mcfg, tokenizer, prompts, steps=steps, cfg_weight=cfg_weight,
                                seed=seed, show=show)
    if out_png:
        from PIL import Image
        Image.fromarray(image).save(out_png)
    return ts


def trajectory_grid(model, vae, mcfg, tokenizer, prompts: Sequence[str], *, steps: int = 30,
                    cfg_weight: float = 2.0, seed: int = 0, show: Sequence[int] = (0, 1, 3, 6, 9, 15, 24),
                    noise=None) -> tuple[list, np.ndarray]:
    """:func:`trajectory_rows` for ``prompts`` (one sample each; ``mcfg`` the model's config),
    from ``noise`` (len(prompts), latent, latent, C) or else noise drawn from ``seed``.
    Returns (the shown t values, a uint8 grid like :func:`grid`: top row the final samples,
    then per shown step z | x_hat). A step-by-step Python loop, not the sampler's fused
    program, so that intermediate states can be read; tests check both end equal."""
    if not prompts:
        raise ValueError("trajectory_report needs at least one prompt")
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from janusflow.data.tokenizer import generation_prompt_ids
    from janusflow.models.vae import decode_latents
    from janusflow.objectives.cfg_dropout import uncond_prompt_mask
    from janusflow.sample.generate import latent_shape, pad_prompts
    ids = [generation_prompt_ids(tokenizer, p, mcfg.head) for p in prompts]
    pid, pmask = pad_prompts(ids, max(map(len, ids)), tokenizer.pad_id)
    pid, pmask = jnp.asarray(pid), jnp.asarray(pmask)
    umask = uncond_prompt_mask(pmask)

    @nnx.jit
    def velocity(model, mask, z, t):
        return model.generate_velocity(model.language_model.embed(pid), mask, z, t).velocity

    @nnx.jit
    def decode(vae, z):
        return decode_latents(vae, mcfg.vae, z)

    shape = (len(prompts),) + latent_shape(mcfg)
    if noise is None:
        z0 = jax.random.normal(jax.random.key(seed), shape, jnp.float32)
    elif np.shape(noise) != shape:
        raise ValueError(f"noise must have shape {shape} (prompts, latent, latent, channels), got {np.shape(noise)}")
    else:
        z0 = jnp.asarray(noise, jnp.float32)
    rows = trajectory_rows(lambda z, t, cond: velocity(model, pmask if cond else umask, z, t), z0, steps,
                           cfg_weight, show)
    px = [(t, np.asarray(decode(vae, z), np.float32), np.asarray(decode(vae, xh), np.float32)) for t, z, xh in rows]
    return [t for t, _, _ in px[:-1]], grid(px[-1][1], px[:-1])


def summary(report: dict) -> str:
    return "one-step denoising MSE (pixels in [-1, 1]): " + ", ".join(
        f"t={t:g}: {m:.4f}" for t, m in zip(report["t"], report["mse"]))


def evaluate_checkpoint(model_dir: str, cfg, *, n: int = 8, ts: Sequence[float] = DEFAULT_TS, seed: int = 0,
                        out_png: str | None = None) -> dict:
    """:func:`denoise_report` of a saved model; the data source comes from ``cfg``, whose model
    config is replaced by the checkpoint's (as ``eval conditioning``)."""
    import dataclasses


    from janusflow.checkpoint.model_io import load_model
    from janusflow.models.build import build_vae
    model, mcfg = load_model(model_dir)
    vae = build_vae(mcfg.vae)
    return denoise_report(model, vae, dataclasses.replace(cfg, model=mcfg), n=n, ts=ts, seed=seed, out_png=out_png)


# prompts of the shapes world covering the six GenEval tags (one-object prompts with and without a colour)
SHAPES_PROMPTS = ("a photo of a circle", "a photo of a red square", "a photo of a triangle and a star",
                  "a photo of three diamonds", "a photo of a cross left of a circle",
                  "a photo of a blue square and a yellow circle", "a photo of a green star")


def trajectory_checkpoint(model_dir: str, prompts: Sequence[str] = SHAPES_PROMPTS, **kw) -> list:
    """:func:`trajectory_report` of a saved model (its own tokenizer and config)."""

    from janusflow.checkpoint.model_io import load_model
    from janusflow.data.tokenizer import Tokenizer
    from janusflow.models.build import build_vae
    model, mcfg = load_model(model_dir)
    if not mcfg.gen_enabled:
        raise ValueError(f"{model_dir}: the model has no generation path (gen_enabled=False)")
    return trajectory_report(model, build_vae(mcfg.vae), mcfg, Tokenizer.load(model_dir),
                             prompts, **kw)
