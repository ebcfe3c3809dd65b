"""Random batches with the exact layout the train step expects (see ``train/step.py``).

Used by the train-step tests and ``janusflow bench train``, where the data pipeline must not
be part of the measurement. Token layouts follow the spec's templates in shape only.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from janusflow.configs.schema import ExperimentConfig
from janusflow.models.siglip import normalize


def synthetic_batch(cfg: ExperimentConfig, seed: int = 0, prompt_len: int = 16,
                    answer_len: int = 8, text_len: int = 32, latents: bool | None = None) -> dict:
    """``latents`` (default ``cfg.data.gen.latents``): the gen sub-batch carries precomputed
    ``latents`` (random, the scale of scaled VAE latents) instead of ``images``, as a
    ``janusflow data latents`` dataset feeds it."""
    m, t = cfg.model, cfg.train
    latents = cfg.data.gen.latents if latents is None else latents
    r = np.random.RandomState(seed)
    v, s = m.llm.vocab_size, m.image_size
    out = {}
    if t.und_batch and m.und.understands:
        n_img = 1 + m.num_und_tokens
        T = 2 + n_img + prompt_len + answer_len
        image_mask = np.zeros((t.und_batch, T), bool)
        image_mask[:, 2:2 + n_img] = True
        loss_mask = np.zeros((t.und_batch, T), bool)
        loss_mask[:, -answer_len:] = True
        imgs = r.rand(t.und_batch, s, s, 3).astype(np.float32)
        out["und"] = {"ids": jnp.asarray(r.randint(0, v, (t.und_batch, T)), jnp.int32),
                      "attention_mask": jnp.ones((t.und_batch, T), bool),
                      "image_mask": jnp.asarray(image_mask), "loss_mask": jnp.asarray(loss_mask),
                      "pixels": normalize(jnp.asarray(imgs), m.siglip),
                      "vae_images": jnp.asarray(imgs * 2 - 1)}
    if t.gen_batch and m.gen_enabled:
        imgs = r.rand(t.gen_batch, s, s, 3).astype(np.float32)
        ids = r.randint(0, v, (t.gen_batch, prompt_len)).astype(np.int32)
        out["gen"] = {"prompt_ids": jnp.asarray(ids), "prompt_mask": jnp.ones((t.gen_batch, prompt_len), bool)}
        if m.generates_image_tokens:
            # the official unconditional row of each prompt (pad id 0 here), images or their
            # codes (``latents``: precomputed, random codes)
            uncond = ids.copy()
            uncond[:, 1:-1] = 0
            out["gen"]["uncond_prompt_ids"] = jnp.asarray(uncond)
            if latents:
                out["gen"]["codes"] = jnp.asarray(r.randint(0, m.vq.codebook_size, (t.gen_batch, m.num_gen_tokens)),
                                                  jnp.int32)
            else:
                out["gen"]["images"] = jnp.asarray(imgs * 2 - 1)
            return _with_text(out, cfg, r, text_len)
        if latents:
            lat = (t.gen_batch, m.latent_size, m.latent_size, m.vae.channels)
            out["gen"]["latents"] = jnp.asarray(r.randn(*lat).astype(np.float32))
        else:
            out["gen"]["images"] = jnp.asarray(imgs * 2 - 1)
        out["gen"]["repa_pixels"] = normalize(jnp.asarray(imgs), m.siglip)
    return _with_text(out, cfg, r, text_len)


def _with_text(out, cfg, r, text_len):
    t = cfg.train.text_batch
    if t:
        out["text"] = {"ids": jnp.asarray(r.randint(0, cfg.model.llm.vocab_size, (t, text_len)), jnp.int32),
                       "attention_mask": jnp.ones((t, text_len), bool),
                       "loss_mask": jnp.ones((t, text_len), bool)}
    return out
