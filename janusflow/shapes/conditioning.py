"""Does the generator read its prompt? The conditioning gap of the rectified-flow loss.

For a batch of (prompt, image) pairs, the RF loss is computed twice on identical noise z0 and
identical t: once with every image's own prompt and once with the prompts rolled by one row
(each image paired with another example's prompt). A model that uses the prompt predicts the
velocity better with the right one, so

    gap(t) = loss(shuffled prompts) - loss(correct prompts)      (per example, mean over pixels)

is positive; a model that ignores the prompt has gap ~ 0 (the shuffled prompt is as good as
the right one). The gap is largest at small t (mostly noise), where the prompt is the only
source of what the image should hold.

Why this exists: the shapes benchmark of a tiny CPU run is coarse (a few images per tag) and
reads 0 for a generator that draws clean shapes of the wrong colour, while this number moves
smoothly with training. The default run's diagnosis (README, "The default run") found gap ~ 0
after the whole recipe, and gap 0.034 at t=0.1 only after 1000 gen-only steps on a trivial
colour-fill task; this module makes that measurement part of every recipe evaluation.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

DEFAULT_TS = (0.1, 0.3, 0.5, 0.7)


def gap_from_losses(loss_fn: Callable, batch: dict, ts: Sequence[float] = DEFAULT_TS, seed: int = 0,
                    other: dict | None = None) -> dict:
    """``loss_fn(gen_batch, t (n,), z0, prompt_mask) -> mean RF loss`` (a float). Returns
    ``{"t": [...], "correct": [...], "shuffled": [...], "gap": [...], "n": n}``. ``other``
    (``{"prompt_ids", "prompt_mask"}`` of the same shapes) replaces the rolled prompts, e.g.
    the same prompts with one word swapped (:func:`shape_gap`)."""
    import jax
    import jax.numpy as jnp
    g = batch["gen"]
    n = g["prompt_ids"].shape[0]
    if n < 2 and other is None:
        raise ValueError(f"the conditioning gap needs at least 2 examples to swap prompts, got {n}")
    for tv in ts:
        if not 0.0 <= float(tv) < 1.0:
            raise ValueError(f"t must be in [0, 1), got {tv}")
    if other is None:
        perm = np.roll(np.arange(n), 1)
        other = {"prompt_ids": g["prompt_ids"][perm], "prompt_mask": g["prompt_mask"][perm]}
    for k in ("prompt_ids", "prompt_mask"):
        if other[k].shape != g[k].shape:
            raise ValueError(f"other[{k!r}] has shape {other[k].shape}, expected {g[k].shape}")
    shuffled = {**g, "prompt_ids": other["prompt_ids"], "prompt_mask": other["prompt_mask"]}
    out = {"t": [float(t) for t in ts], "correct": [], "shuffled": [], "gap": [], "n": int(n)}
    key = jax.random.key(seed)
    for tv in ts:
        t = jnp.full((n,), float(tv), jnp.float32)
        a = float(loss_fn(g, t, key, g["prompt_mask"]))
        b = float(loss_fn(shuffled, t, key, shuffled["prompt_mask"]))
        out["correct"].append(a)
        out["shuffled"].append(b)
        out["gap"].append(b - a)
    return out


def model_loss_fn(model, vae, cfg) -> Callable:
    """The mean RF loss of ``model`` for :func:`gap_from_losses` (the train step's own loss
    code, ``train/step.py::loss_sums``; the noise z0 is drawn from ``key`` in the latent shape,
    so both calls of one t see the same z0)."""
    import jax
    from flax import nnx

    from janusflow.train.step import loss_sums
    mc = cfg.model
    lat = (mc.latent_size, mc.latent_size, mc.vae.channels)

    @nnx.jit
    def _loss(model, vae, g, t, z0, prompt_mask):
        s = loss_sums(model, vae, {"gen": g}, {"t": t, "z0": z0, "prompt_mask": prompt_mask}, cfg)
        return s["rf"] / t.shape[0]

    def fn(g, t, key, prompt_mask):
        z0 = jax.random.normal(key, (t.shape[0],) + lat)
        return _loss(model, vae, g, t, z0, prompt_mask)
    return fn


def validation_batch(cfg, n: int = 64, seed: int = 0) -> dict:
    """``{"gen": ...}``: ``n`` examples of the experiment's generation source, validation split
    (held-out prompts where the dataset has them), as the pipeline feeds the train step."""
    import dataclasses

    import jax.numpy as jnp

    from janusflow.data.mixing import with_task_ratios
    from janusflow.data.pipeline import make_pipeline
    if not cfg.data.gen.enabled:
        raise ValueError("the conditioning gap needs a generation source (data.gen.name is empty)")
    data = dataclasses.replace(cfg.data, seed=seed, gen=dataclasses.replace(cfg.data.gen, split="validation"))
    view = dataclasses.replace(with_task_ratios(cfg, (0, 1, 0), n), data=data)
    it = make_pipeline(view, data, process_index=0, process_count=1)
    try:
        b = next(iter(it))
    finally:
        it.close() if hasattr(it, "close") else None
    return {"gen": {k: jnp.asarray(v) for k, v in b["gen"].items()}}


def conditioning_gap(model, vae, cfg, *, n: int = 64, ts: Sequence[float] = DEFAULT_TS, seed: int = 0) -> dict:
    """The gap of ``model`` on ``n`` validation examples at each t (see the module doc)."""
    return gap_from_losses(model_loss_fn(model, vae, cfg), validation_batch(cfg, n, seed), ts, seed)


SHAPE_GAP_TS = (0.05, 0.1, 0.2, 0.3)


def shape_swap_prompts(n: int, seed: int = 0):
    """``n`` one-object scenes of the shapes world, as ``(metadata, swapped_prompt)``: each
    scene's GenEval colors prompt ("a photo of a red circle") and the same prompt with the shape
    word replaced by another shape (same colour). Shapes cycle so every one appears n/6 times."""
    from janusflow.shapes import world as shapes
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        shape = shapes.SHAPES[i % len(shapes.SHAPES)]
        color = shapes.COLORS[int(rng.integers(len(shapes.COLORS)))]
        other = shapes.SHAPES[(i % len(shapes.SHAPES) + 1 + int(rng.integers(len(shapes.SHAPES) - 1)))
                              % len(shapes.SHAPES)]
        out.append((shapes.meta_colors(shape, color), shapes.meta_colors(other, color)["prompt"]))
    return out


def shape_gap(model, vae, cfg, tokenizer, *, n: int = 192, ts: Sequence[float] = SHAPE_GAP_TS,
              seed: int = 0) -> dict:
    """Does the generator read the *shape* word? :func:`gap_from_losses` on ``n`` one-object
    shapes scenes with their own prompt vs the same prompt naming another shape (same colour).
    Colour and position say nothing here, so this isolates what the conditioning gap (mostly
    colour) hides. ``cfg``: the experiment (its model config is the checkpoint's)."""
    import dataclasses

    import jax.numpy as jnp

    from janusflow.shapes import world as shapes
    from janusflow.data.tokenizer import generation_prompt_ids
    from janusflow.sample.generate import pad_prompts
    mc = cfg.model
    rng = np.random.default_rng([seed, 1])
    items = shape_swap_prompts(n, seed)
    images = np.stack([shapes.render(shapes.scene_from_metadata(md, rng, mc.image_size), mc.image_size, rng)
                       for md, _ in items]).astype(np.float32) / 127.5 - 1.0
    right = [generation_prompt_ids(tokenizer, md["prompt"], mc.head) for md, _ in items]
    wrong = [generation_prompt_ids(tokenizer, p, mc.head) for _, p in items]
    length = max(map(len, right + wrong))
    ids, mask = pad_prompts(right, length, tokenizer.pad_id)
    ids2, mask2 = pad_prompts(wrong, length, tokenizer.pad_id)
    # the RF term only: no REPA target is needed (the loss code skips it at weight 0)
    loss_cfg = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, loss=dataclasses.replace(cfg.train.loss, repa_weight=0.0)))
    batch = {"gen": {"images": jnp.asarray(images), "prompt_ids": jnp.asarray(ids), "prompt_mask": jnp.asarray(mask)}}
    return gap_from_losses(model_loss_fn(model, vae, loss_cfg), batch, ts, seed,
                           other={"prompt_ids": jnp.asarray(ids2), "prompt_mask": jnp.asarray(mask2)})


def summary(res: dict) -> str:
    return ", ".join(f"t={t:g}: {c:.4f} vs {s:.4f} (gap {g:+.4f})"
                     for t, c, s, g in zip(res["t"], res["correct"], res["shuffled"], res["gap"]))


def evaluate_checkpoint(model_dir: str, cfg, *, n: int = 64, ts: Sequence[float] = DEFAULT_TS, seed: int = 0,
                        shape_swap: bool = False) -> dict:
    """The gap of a saved model (``model_io`` directory); the data source comes from ``cfg``,
    whose model config is replaced by the checkpoint's. ``shape_swap``: :func:`shape_gap`
    instead (its own one-object scenes; the checkpoint's tokenizer)."""
    import dataclasses


    from janusflow.checkpoint.model_io import load_model
    from janusflow.models.build import build_vae
    model, mcfg = load_model(model_dir)
    if not mcfg.gen_enabled:
        raise ValueError(f"{model_dir}: the model has no generation path (gen_enabled=False)")
    cfg = dataclasses.replace(cfg, model=mcfg)
    vae = build_vae(mcfg.vae)   # as train/recipe.py::evaluate
    if shape_swap:
        from janusflow.data.tokenizer import Tokenizer
        return shape_gap(model, vae, cfg, Tokenizer.load(model_dir), n=n, ts=ts, seed=seed)
    return conditioning_gap(model, vae, cfg, n=n, ts=ts, seed=seed)
