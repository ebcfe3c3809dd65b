"""The builders of JanusFlow's parts by name: ``PARTS`` maps each part (an attribute of the
JanusFlow module, and the root of its parameters' paths) to the function that builds it. Which
parts a configuration builds is ``ModelConfig.parts`` (the variant registry,
``configs/variants.py``); the model builds them in this table's order.

The order is the random-initialisation order (every part draws from one ``nnx.Rngs``): a new
part is appended, so every existing variant keeps its initial weights.
"""

from __future__ import annotations

from typing import Callable

from flax import nnx

from janusflow.configs.schema import ModelConfig
from janusflow.models.gen_codec import GenDecoder, GenEncoder
from janusflow.models.layers import Linear, RMSNorm, normal, param, zeros
from janusflow.models.repa_projector import RepaProjector
from janusflow.models.siglip import SiglipVisionTower

Builder = Callable[[ModelConfig, nnx.Rngs, object], nnx.Module]


def _siglip(cfg, rngs, dt):
    return SiglipVisionTower(cfg.siglip, rngs=rngs, dtype=dt, remat=cfg.remat,
                             attention_impl=cfg.attention_impl, scan=cfg.scan_layers,
                             matmul_impl=cfg.matmul_impl)


def _gen_encoder(cfg, rngs, dt):
    return GenEncoder(cfg.gen_codec, latent_channels=cfg.vae.channels, hidden_size=cfg.llm.hidden_size,
                      rngs=rngs, dtype=dt, remat=cfg.remat)


def _und_aligner(cfg, rngs, dt):
    # from the understanding encoder's features: SigLIP's width or the gen codec's channels
    if cfg.und.encoder == "und_encoder":
        width, axis = cfg.siglip.width, "vit_embed"
    else:
        width, axis = cfg.gen_codec.channels, "conv_out"
    return Linear(width, cfg.llm.hidden_size, axes=(axis, "embed"), rngs=rngs, dtype=dt)


def _beg_of_und_embed(cfg, rngs, dt):
    # "official": zeros and no gradient, as the released module initialises and detaches it
    # (config.py, ModelConfig.beg_of_und_embed); "learned": a trained vector.
    init = zeros if cfg.beg_of_und_embed == "official" else normal(0.02)
    return param(rngs, init, (cfg.llm.hidden_size,), ("embed",))


def _gen_aligner(cfg, rngs, dt):
    return Linear(cfg.gen_codec.channels, cfg.llm.hidden_size, axes=("conv_out", "embed"), rngs=rngs, dtype=dt)


def _gen_decoder_norm(cfg, rngs, dt):
    return RMSNorm(cfg.llm.hidden_size, cfg.llm.rms_norm_eps, rngs=rngs)


def _gen_decoder_aligner(cfg, rngs, dt):
    return Linear(cfg.llm.hidden_size, cfg.gen_codec.channels, axes=("embed", "conv_in"), rngs=rngs, dtype=dt)


def _gen_decoder(cfg, rngs, dt):
    return GenDecoder(cfg.gen_codec, latent_channels=cfg.vae.channels, hidden_size=cfg.llm.hidden_size,
                      rngs=rngs, dtype=dt, remat=cfg.remat)


def _repa_projector(cfg, rngs, dt):
    return RepaProjector(cfg.llm.hidden_size, cfg.repa_hidden, cfg.siglip.width, rngs=rngs, dtype=dt)


PARTS: dict[str, Builder] = {
    "und_encoder": _siglip,                 # SigLIP: understanding encoder and REPA target
    "und_gen_encoder": _gen_encoder,        # Table 6 C's own copy of the generation encoder
    "und_aligner": _und_aligner,
    "beg_of_und_embed": _beg_of_und_embed,
    "gen_encoder": _gen_encoder,
    "gen_aligner": _gen_aligner,
    "gen_decoder_norm": _gen_decoder_norm,
    "gen_decoder_aligner": _gen_decoder_aligner,
    "gen_decoder": _gen_decoder,
    "repa_projector": _repa_projector,
}


def build_part(name: str, cfg: ModelConfig, rngs: nnx.Rngs, dtype):
    """One part, or None when ``cfg`` does not build it."""
    return PARTS[name](cfg, rngs, dtype) if name in cfg.parts else None
