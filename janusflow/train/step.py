"""One training step: losses of a mixed batch, gradients, AdamW, EMA; jitted with explicit
shardings so the same code runs on 1 CPU, simulated devices, a GPU node or a TPU slice.

Batch layout (global arrays; the leading dim is sharded over ('data', 'fsdp')); every task
sub-batch is optional:
  und:  ids, attention_mask, image_mask, loss_mask (B_u, T);  pixels (B_u, S, S, 3) SigLIP-
        normalised;  for the gen-encoder ablations (B, C) either vae_images (B_u, H, W, 3) in
        [-1, 1] or vae_latents (B_u, h, w, C)
  gen:  prompt_ids, prompt_mask (B_g, L) -- the prompt without the generation tag token;
        images (B_g, H, W, 3) in [-1, 1]  or  latents (B_g, h, w, C);
        repa_pixels (B_g, S, S, 3) SigLIP-normalised
        Janus-Pro (image tokens): prompt_ids end in <begin_of_image>; uncond_prompt_ids (B_g, L),
        the official unconditional row of each prompt (CFG dropout picks it); images (encoded
        by the model's frozen VQ tokenizer in the step) or precomputed codes (B_g, N) int
        (``janusflow data latents`` on a Janus-Pro experiment stores them)
  text: ids, attention_mask, loss_mask (B_t, T)
``latents`` / ``vae_latents`` are what ``encode_latents`` returns (posterior mean, shifted and
multiplied by the VAE scaling factor; h = w = image_size / VAE downsampling, C = latent
channels). The VAE is frozen and deterministic, so precomputed latents (``janusflow data
latents``) give the same loss as encoding in the step, without the encoder's FLOPs (about 0.62
TFLOP per 384 px image for the SDXL-VAE, more than the rest of a 2-layer model's step).
``loss_mask`` marks tokens to be predicted (answer tokens). Losses: L_AR (mean over all
predicted tokens of und + text), L_RF and L_REPA (means over generation examples), or for a
model that generates image tokens (Janus-Pro) L_IMG (mean over the image tokens); the total
is their weighted sum, each task's mean counted once (``loss.task_weighting="task"``, the
default), or each weighted by its share of the batch's examples (``"example"``: every example
weighs the same whatever its task; the paper states neither). Every term is reported separately.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from janusflow.configs.schema import ExperimentConfig
from janusflow.models.vae import encode_latents
from janusflow.objectives import ar, cfg_dropout, flow, image_tokens, repa
from janusflow.parallel.rules import (activation_sharding, batch_sharding, constrain_like,
                                      experiment_rules, replicated)
from janusflow.train import low_precision
from janusflow.train.state import Parts, TrainState, merge_model, merge_vae

TERMS = ("ar", "rf", "repa", "img")
# the step key folded with this draws the stochastic rounding of bfloat16 parameters
ROUNDING_STREAM = 0xB16


def gen_batch_size(g) -> int:
    """Rows of a gen sub-batch (it carries images, precomputed latents or precomputed codes)."""
    for k in ("latents", "codes", "images"):
        if k in g:
            return g[k].shape[0]
    raise ValueError(f"the gen batch needs 'images' (encoded in the step) or precomputed 'latents' / "
                     f"'codes'; it has {sorted(g)}")


def image_codes(model, mc, g):
    """Precomputed codes when the batch carries them, else the frozen VQ tokenizer encodes the
    images here (codes are integers: nothing flows back into the tokenizer)."""
    if "codes" in g:
        codes = g["codes"].astype(jnp.int32)
    elif "images" in g:
        codes, _ = model.gen_vision.encode(g["images"])
    else:
        raise ValueError(f"the gen batch needs 'images' or precomputed 'codes'; it has {sorted(g)}")
    if codes.shape[1:] != (mc.num_gen_tokens,):
        raise ValueError(f"image codes of shape {codes.shape}, expected (batch, {mc.num_gen_tokens}) "
                         f"(image_size={mc.image_size}, VQ downsampling {mc.vq.downsample})")
    return jax.lax.stop_gradient(codes)


def vae_input(vae, vae_cfg, b, images_key: str, latents_key: str):
    """Precomputed latents when the batch carries them, else the frozen VAE encodes the images
    here. Either way no gradient flows into the VAE."""
    if latents_key in b:
        x = b[latents_key].astype(jnp.float32)
    elif images_key in b:
        x = encode_latents(vae, vae_cfg, b[images_key]).astype(jnp.float32)  # train.vae_dtype may be bf16
    else:
        raise ValueError(f"batch needs {images_key!r} or precomputed {latents_key!r}; it has {sorted(b)}")
    return jax.lax.stop_gradient(x)


def _global_counts(batch, loss_cfg, num_gen_tokens: int):
    """Denominators of the three means, from the whole (not micro-) batch, so gradient
    accumulation gives exactly the gradient of the full-batch loss."""
    ar_count = jnp.zeros((), jnp.float32)
    for task in ("und", "text"):
        if task in batch:
            _, m = ar.shift_targets(batch[task]["ids"], batch[task]["loss_mask"])
            ar_count += jnp.sum(m, dtype=jnp.float32)
    n_gen = jnp.asarray(gen_batch_size(batch["gen"]) if "gen" in batch else 0, jnp.float32)
    n_ar = jnp.asarray(sum(batch[t]["ids"].shape[0] for t in ("und", "text") if t in batch), jnp.float32)
    return {"ar": ar_count, "rf": n_gen, "repa": n_gen, "img": n_gen * num_gen_tokens, "ar_rows": n_ar}


def sample_noise(key, batch, cfg: ExperimentConfig):
    """Per-example randomness of the generation samples for the whole global batch: t, z0 and
    the CFG-dropout mask. Drawn once per step (not per micro-batch) so that gradient
    accumulation sees exactly the same samples as one big batch."""
    if "gen" not in batch:
        return {}
    mc, lc = cfg.model, cfg.train.loss
    g = batch["gen"]
    bsz = gen_batch_size(g)
    k_t, k_noise, k_drop = jax.random.split(key, 3)
    if mc.generates_image_tokens:
        # CFG dropout: the dropped rows read the official unconditional prompt (the sampler's)
        return {"dropped": jax.random.bernoulli(k_drop, lc.cfg_drop_prob, (bsz,))}
    lat = (bsz, mc.latent_size, mc.latent_size, mc.vae.channels)
    prompt_mask, _ = cfg_dropout.drop_prompt(k_drop, g["prompt_mask"], lc.cfg_drop_prob)
    return {"t": flow.sample_t(k_t, bsz, lc.t_sampling, lc.t_mean, lc.t_std),
            "z0": jax.random.normal(k_noise, lat, jnp.float32), "prompt_mask": prompt_mask}


def max_predicted(task: str, b, mc) -> int:
    """Static bound on the predicted tokens of one row, so logits are computed only there: an
    understanding row spends 1 + num_und_tokens slots on its image, which are never predicted
    (the data pipeline always places the image); text rows may predict every position."""
    t = b["ids"].shape[1]
    k = t - (1 + mc.num_und_tokens)
    return k if task == "und" and k > 0 else t


def loss_sums(model, vae, batch, noise, cfg: ExperimentConfig):
    """Sums (not means) of each loss term over this (micro-)batch."""
    mc, lc = cfg.model, cfg.train.loss
    sums = {k: jnp.zeros((), jnp.float32) for k in TERMS}
    lm = model.language_model
    for task in ("und", "text"):
        if task not in batch:
            continue
        b = batch[task]
        if task == "und":
            latents = (vae_input(vae, mc.vae, b, "vae_images", "vae_latents")
                       if mc.und.reads_latents else None)
            embeds = model.understanding_embeds(b["ids"], b["image_mask"], b.get("pixels"), latents)
        else:
            embeds = lm.embed(b["ids"])
        hidden = lm(embeds, attention_mask=b["attention_mask"]).hidden
        targets, mask = ar.shift_targets(b["ids"], b["loss_mask"])
        s, _ = ar.ar_loss_at_answers(lm.logits, hidden, targets, mask, max_predicted(task, b, mc))
        sums["ar"] += s
    if "gen" in batch and mc.generates_image_tokens:
        g = batch["gen"]
        if "uncond_prompt_ids" not in g:
            raise ValueError("a Janus-Pro gen batch needs 'uncond_prompt_ids' (the data pipeline makes them)")
        ids = jnp.where(noise["dropped"][:, None], g["uncond_prompt_ids"], g["prompt_ids"])
        sums["img"], _ = image_tokens.image_token_loss(model, ids, g["prompt_mask"], image_codes(model, mc, g))
    elif "gen" in batch:
        g = batch["gen"]
        x = vae_input(vae, mc.vae, g, "images", "latents")
        t, z0, prompt_mask = noise["t"], noise["z0"], noise["prompt_mask"]
        if z0.shape != x.shape:
            what = "precomputed latents have" if "latents" in g else "generation images encode to latents of"
            raise ValueError(f"{what} shape {x.shape}, expected {z0.shape} (image_size={mc.image_size}, "
                             f"VAE downsampling {mc.vae.downsample}, {mc.vae.channels} channels)")
        z_t = flow.interpolate(x, z0, t)
        use_repa = mc.repa and lc.repa_weight > 0
        out = model.generate_velocity(lm.embed(g["prompt_ids"]), prompt_mask, z_t, t, with_repa=use_repa)
        sums["rf"], _ = flow.rf_loss_terms(out.velocity, x, z0)
        if use_repa:
            sums["repa"], _ = repa.repa_loss(out.repa_pred, model.repa_target(g["repa_pixels"]))
    return sums


def task_weights(counts, lc) -> dict:
    """Multiplier of each term's mean in the total (``LossConfig.task_weighting``): 1 each for
    "task"; for "example", the share of the batch's examples the term's task holds (AR: und +
    text rows; RF, REPA and image tokens: generation rows)."""
    w = {"ar": lc.ar_weight, "rf": lc.rf_weight, "repa": lc.repa_weight, "img": lc.img_weight}
    if lc.task_weighting == "task":
        return w
    rows = jnp.maximum(counts["ar_rows"] + counts["rf"], 1.0)
    share = {"ar": counts["ar_rows"] / rows, **{k: counts["rf"] / rows for k in ("rf", "repa", "img")}}
    return {k: w[k] * share[k] for k in TERMS}


def _weighted_total(sums, counts, lc):
    w = task_weights(counts, lc)
    return sum(w[k] * ar.safe_mean(sums[k], counts[k]) for k in TERMS)


def _micro(batch, accum: int):
    """(B, ...) -> (accum, B/accum, ...) taking rows i*accum + a into micro-batch a, so each
    micro-batch draws evenly from every device's contiguous shard of the batch."""
    def split(x):
        if x.shape[0] % accum:
            raise ValueError(f"batch of {x.shape[0]} not divisible by accum_steps={accum}")
        return jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1)
    return jax.tree.map(split, batch)


def make_train_step(cfg: ExperimentConfig, parts: Parts, param_shardings=None):
    """``param_shardings``: the trainable parameters' NamedShardings; the gradients and the
    accumulator are pinned to them (without, XLA may keep a gradient replicated or sharded
    like the activations it came from)."""
    lc, oc = cfg.train.loss, cfg.train.optim

    def grads_and_sums(params, state: TrainState, batch, noise, counts):
        def loss_fn(p):
            model = merge_model(parts, p, state.frozen)
            sums = loss_sums(model, merge_vae(parts, state.vae), batch, noise, cfg)
            return _weighted_total(sums, counts, lc), sums
        (_, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return constrain_like(grads, param_shardings), sums

    def step(state: TrainState, batch):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        counts = _global_counts(batch, lc, cfg.model.num_gen_tokens)
        noise = sample_noise(key, batch, cfg)
        if oc.accum_steps == 1:
            grads, sums = grads_and_sums(state.params, state, batch, noise, counts)
        else:
            micro = _micro((batch, noise), oc.accum_steps)
            acc = constrain_like(jax.tree.map(jnp.zeros_like, state.params), param_shardings)
            zeros = (acc, {k: jnp.zeros((), jnp.float32) for k in TERMS})

            def body(carry, mb):
                g, s = grads_and_sums(state.params, state, mb[0], mb[1], counts)
                acc = constrain_like(jax.tree.map(jnp.add, carry[0], g), param_shardings)
                return (acc, {k: carry[1][k] + s[k] for k in TERMS}), None
            (grads, sums), _ = jax.lax.scan(body, zeros, micro)

        terms = {k: ar.safe_mean(sums[k], counts[k]) for k in TERMS}
        loss = _weighted_total(sums, counts, lc)
        grad_norm = optax.tree.norm(grads)
        # A non-finite loss or gradient leaves the state untouched (the host loop then stops
        # with an error). lax.cond, not a select over two full states: only the taken branch
        # runs and XLA can update the donated buffers in place, so peak memory stays ~1x state.
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def apply(st):
            updates, opt_state = parts.optimizer.update(grads, st.opt_state, st.params)
            # float32 sums; bfloat16 parameters (model.param_dtype) are rounded stochastically
            round_key = jax.random.fold_in(key, ROUNDING_STREAM)
            params = low_precision.apply_updates(st.params, updates, jax.random.fold_in(round_key, 0))
            ema = st.ema
            if ema is not None:
                ema = low_precision.ema_update(ema, params, oc.ema_decay, jax.random.fold_in(round_key, 1))
            return st._replace(step=st.step + 1, params=params, opt_state=opt_state, ema=ema)

        new = jax.lax.cond(ok, apply, lambda st: st, state)
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": parts.schedule(state.step),
                   "finite": ok, **{f"loss_{k}": v for k, v in terms.items()}}
        return new, metrics

    return step


def batch_shardings(mesh, batch):
    return jax.tree.map(lambda x: batch_sharding(mesh, x.ndim), batch)


def jit_train_step(cfg: ExperimentConfig, parts: Parts, shardings: TrainState, mesh, example_batch):
    """The jitted step with explicit in/out shardings; the state buffers are donated. It is
    traced under ``activation_sharding``, so the models' ``constrain`` calls take effect."""
    inner = make_train_step(cfg, parts, shardings.params)
    _, act_rules = experiment_rules(cfg)

    def step(state, batch):
        with activation_sharding(mesh, act_rules):
            return inner(state, batch)
    b_sh = batch_shardings(mesh, example_batch)
    rep = replicated(mesh)
    return jax.jit(step, in_shardings=(shardings, b_sh), out_shardings=(shardings, rep),
                   donate_argnums=(0,))


class NonFiniteLoss(FloatingPointError):
    pass


def _terms(metrics) -> str:
    return ", ".join(f"{k}={float(metrics[k]):.6g}" for k in sorted(metrics)
                     if k.startswith("loss") or k == "grad_norm")


def check_finite(step: int, metrics) -> None:
    """Host-side: raise naming the step and every loss term when the step was non-finite."""
    if bool(metrics["finite"]):
        return
    raise NonFiniteLoss(f"non-finite loss or gradient at step {step}: {_terms(metrics)}; the state was "
                        "kept at the last finite step and no checkpoint is written from it")


def check_finite_steps(steps, metrics) -> None:
    """Host-side check of the steps run since the last one (their fetched metrics): raise
    naming the first non-finite step and its terms. That step's update was skipped on the
    device; nothing after it is checkpointed, as the loop checks before every save."""
    for step, m in zip(steps, metrics):
        if not bool(m["finite"]):
            raise NonFiniteLoss(f"non-finite loss or gradient at step {step}: {_terms(m)}; its update was "
                                f"skipped and no checkpoint is written after step {step}")
