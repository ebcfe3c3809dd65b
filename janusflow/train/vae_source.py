"""Which frozen VAE a training run encodes its images with.

JanusFlow generates in the latent space of the pretrained SDXL-VAE. A run that feeds images
(not precomputed latents) through a randomly initialised KL VAE trains against a meaningless
latent space and nothing in its losses says so, so such a run is refused before it starts
unless the model config says a random VAE is intended (``model.vae_random_ok``: tiny test
models, for which no pretrained VAE exists). ``train.vae_from`` (``janusflow train --vae DIR``)
names a diffusers ``AutoencoderKL`` directory whose weights go into the train state.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

from janusflow.configs.schema import ConfigError, ExperimentConfig, VAEConfig



def streams_through_vae(cfg: ExperimentConfig) -> list[str]:
    """The task streams whose images the step would encode with the KL VAE."""
    m, t = cfg.model, cfg.train
    if m.vae.kind == "pixel":
        return []
    out = []
    # Janus-Pro's generation images go through its VQ tokenizer, never the VAE
    if m.gen_enabled and t.gen_batch and not cfg.data.gen.latents and not m.generates_image_tokens:
        out.append("gen")
    if m.und.reads_latents and t.und_batch:
        out.append("und")          # understanding images are never precomputed
    return out


def check_vae_source(cfg: ExperimentConfig) -> None:
    """Refuse (one line, naming the fields) a run whose images would pass through a randomly
    initialised VAE; refuse ``train.vae_from`` for a model without a KL VAE."""
    if cfg.train.vae_from and cfg.model.vae.kind != "kl":
        raise ConfigError(f"train.vae_from={cfg.train.vae_from!r} names a VAE but model.vae.kind is "
                          f"{cfg.model.vae.kind!r} (no VAE weights to load)")
    streams = streams_through_vae(cfg)
    if streams and not cfg.train.vae_from and not cfg.model.vae_random_ok:
        what = " and ".join(f"data.{s}" for s in streams)
        raise ConfigError(
            f"{what} images would be encoded by a randomly initialised VAE: name the pretrained one "
            f"(--vae DIR or --set train.vae_from=DIR, a diffusers AutoencoderKL directory such as "
            f"stabilityai/sdxl-vae), or feed precomputed latents (data.gen.latents=true), or set "
            f"model.vae_random_ok=true if a random VAE is intended")


def config_diff(a, b) -> list[str]:
    """Names of the fields in which two dataclasses of one type differ."""
    return [f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)]


def load_vae_module(path: str, expected: VAEConfig, where: str = "train.vae_from"):
    """The diffusers ``AutoencoderKL`` at ``path`` (fp32 parameters), checked against the
    experiment's ``model.vae``; every problem is one ``ConfigError`` line naming ``where``."""
    from janusflow.checkpoint.hf import load_vae
    from janusflow.checkpoint.torch_layout import CheckpointMismatch
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ConfigError(f"{where}={path!r}: no diffusers AutoencoderKL directory (no config.json there)")
    try:
        vae, got = load_vae(path, "float32")
    except (CheckpointMismatch, FileNotFoundError, ValueError) as e:
        raise ConfigError(f"{where}={path!r}: {' '.join(str(e).split())}") from None
    diff = config_diff(expected, got)
    if diff:
        raise ConfigError(f"{where}={path!r}: its config differs from the experiment's model.vae in "
                          + ", ".join(f"{k} ({getattr(got, k)!r} vs {getattr(expected, k)!r})" for k in diff))
    return vae


def initial_vae(cfg: ExperimentConfig, log=print) -> Optional[dict]:
    """The VAE parameters a new run starts with: the pretrained ones (pure dict) when
    ``train.vae_from`` names them, else None (the state's random init, allowed only where
    :func:`check_vae_source` lets it through)."""
    check_vae_source(cfg)
    if not cfg.train.vae_from:
        return None
    from janusflow.train.state import vae_params
    params = vae_params(load_vae_module(cfg.train.vae_from, cfg.model.vae))
    log(f"VAE from {cfg.train.vae_from} (compute {cfg.train.vae_dtype})")
    return params
