"""transformers' ``JanusConfig`` ``config.json`` (model_type "janus") <-> :class:`ModelConfig`
(family janus_pro). Absent fields take JanusConfig's defaults, as ``from_pretrained`` would;
every error names the JSON path of the field, as :mod:`janusflow.checkpoint.hf_config` does.

Fields that must hold for the weights to mean what our Janus-Pro computes (GELU everywhere,
two-layer aligners, projection widths equal to the LLM's, q/k/v bias, no qk-norm, one latent)
are required, not assumed. transformers fixes GroupNorm to 32 groups and the vision tower to
all its layers plus the final norm (official ``select_layer=-1``). ``image_token_id`` is the
tokenizer's business (our model takes an image mask), so it is not read; the export writes the
released tokenizer's ``<image_placeholder>`` id.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

from janusflow.checkpoint.hf_config import ConfigObject, janus_pro_hf_config, llm_config_from_hf, read_config_json
from janusflow.configs.schema import ConfigError, ModelConfig, SiglipConfig, VQConfig
from janusflow.configs.variants import AUTOREGRESSIVE

ARCHITECTURE = "JanusForConditionalGeneration"
IMAGE_TOKEN_ID = 100581          # <image_placeholder> of the released Janus-Pro tokenizer
VQ_GROUPS = 32                   # transformers' JanusVQVAE hard-codes GroupNorm(32, ...)


def is_janus_hf_config(config_json) -> bool:
    """A transformers ``JanusConfig`` (not DeepSeek's own ``multi_modality`` layout)."""
    return isinstance(config_json, dict) and (
        config_json.get("model_type") == "janus" or ARCHITECTURE in (config_json.get("architectures") or []))


def _side(j, k, default):
    return j.get(k, "a positive int or a square [n, n] list", default)


def _vision(v, llm_hidden: int, preprocessor: Optional[dict]) -> SiglipConfig:
    for k, want in (("hidden_act", "gelu"), ("attention_bias", True), ("use_qk_norm", False),
                    ("num_channels", 3), ("depth", 2)):
        v.require(k, want, want)
    if v.get("projection_dim", "a positive int", 2048) != llm_hidden:
        raise v.err("projection_dim", f"{v.d['projection_dim']} != text_config.hidden_size {llm_hidden} "
                                      "(the aligner feeds the LLM)")
    mean = std = None
    if preprocessor is not None:      # the processor normalises (JanusImageProcessor)
        pp = ConfigObject(preprocessor, "", "preprocessor_config.json")
        mean = pp.get("image_mean", "a list of 3 numbers or null", None)
        std = pp.get("image_std", "a list of 3 numbers or null", None)
    try:
        return SiglipConfig(
            image_size=_side(v, "image_size", 384), patch_size=_side(v, "patch_size", 16),
            width=v.get("hidden_size", "a positive int", 1024),
            num_layers=v.get("num_hidden_layers", "a positive int", 24),
            num_heads=v.get("num_attention_heads", "a positive int", 16),
            mlp_ratio=v.get("mlp_ratio", "a number", 4.0),
            layer_norm_eps=v.get("layer_norm_eps", "a number", 1e-6), select_layer=-1, attn_pool=False,
            pixel_mean=mean or SiglipConfig.pixel_mean, pixel_std=std or SiglipConfig.pixel_std)
    except ConfigError as e:
        raise ConfigError(f"config.json: vision_config: {e}") from None


def _vq(q, llm_hidden: int) -> VQConfig:
    for k, want in (("double_latent", False), ("in_channels", 3), ("out_channels", 3),
                    ("hidden_act", "gelu"), ("num_hidden_layers", 2)):
        q.require(k, want, want)
    for k in ("projection_dim", "image_token_embed_dim"):
        if q.get(k, "a positive int", 2048) != llm_hidden:
            raise q.err(k, f"{q.d[k]} != text_config.hidden_size {llm_hidden} (the generation "
                           "aligner and head connect the LLM)")
    try:
        return VQConfig(
            codebook_size=q.get("num_embeddings", "a positive int", 16384),
            embed_dim=q.get("embed_dim", "a positive int", 8),
            z_channels=q.get("latent_channels", "a positive int", 256),
            base_channels=q.get("base_channels", "a positive int", 128),
            channel_mult=q.get("channel_multiplier", "a non-empty list of positive ints", (1, 1, 2, 2, 4)),
            num_res_blocks=q.get("num_res_blocks", "a positive int", 2), norm_groups=VQ_GROUPS)
    except ConfigError as e:
        raise ConfigError(f"config.json: vq_config: {e}") from None


def janus_config_from_hf(config_json: dict, base: Optional[ModelConfig] = None, *,
                         preprocessor: Optional[dict] = None) -> ModelConfig:
    """transformers ``JanusConfig`` (as a dict) -> :class:`ModelConfig` (family janus_pro).
    Fields config.json does not settle (dtypes, remat, ...) come from ``base``."""
    root = ConfigObject(config_json, "")
    text = root.sub("text_config")
    text.require("model_type", "llama", "llama")
    # transformers ties lm_head by the top-level flag (JanusConfig's default: tied)
    llm = dataclasses.replace(llm_config_from_hf(text),
                              tie_word_embeddings=root.get("tie_word_embeddings", "a bool", True))
    siglip = _vision(root.sub("vision_config", {}), llm.hidden_size, preprocessor)
    vq = _vq(root.sub("vq_config", {}), llm.hidden_size)
    base = base or ModelConfig(gen_head=AUTOREGRESSIVE.name, repa=False)
    try:
        return dataclasses.replace(base, gen_head=AUTOREGRESSIVE.name, llm=llm, siglip=siglip, vq=vq,
                                   gen_head_hidden=0, und_encoder="siglip", gen_enabled=True, repa=False,
                                   image_size=siglip.image_size, repa_layer=min(base.repa_layer, llm.num_layers))
    except ConfigError as e:
        raise ConfigError(f"config.json: {e}") from None


def read_janus_hf_config(path: str, base: Optional[ModelConfig] = None) -> ModelConfig:
    """:func:`janus_config_from_hf` on a directory's ``config.json`` (and, for the pixel
    normalisation, ``preprocessor_config.json`` when present)."""
    pre_path = os.path.join(path, "preprocessor_config.json")
    pre = read_config_json(pre_path) if os.path.isfile(pre_path) else None
    return janus_config_from_hf(read_config_json(os.path.join(path, "config.json")), base, preprocessor=pre)


def _check_exportable(cfg: ModelConfig):
    d, v = cfg.llm.hidden_size, cfg.vq
    bad = [msg for ok, msg in (
        (cfg.head is AUTOREGRESSIVE, f"gen_head={cfg.gen_head!r} (only {AUTOREGRESSIVE.name!r}: Janus-Pro)"),
        (cfg.gen_head_hidden in (0, d), f"gen_head_hidden={cfg.gen_head_hidden} (transformers ties it "
                                        f"to the LLM width {d})"),
        (v.norm_groups == VQ_GROUPS, f"vq.norm_groups={v.norm_groups} (transformers fixes {VQ_GROUPS})"),
        (v.l2_norm, "vq.l2_norm=False (transformers' decode l2-normalises the codebook)")) if not ok]
    if bad:
        raise ConfigError("transformers' janus layout cannot hold this model: " + "; ".join(bad))


def janus_hf_config(cfg: ModelConfig, torch_dtype: str = "float32") -> dict:
    """transformers' ``JanusConfig`` ``config.json`` for ``cfg`` (inverse of
    :func:`janus_config_from_hf` on the fields it reads)."""
    _check_exportable(cfg)
    d, s, v = cfg.llm.hidden_size, cfg.siglip, cfg.vq
    text = dict(janus_pro_hf_config(cfg, torch_dtype)["language_config"])
    vision = {"model_type": "janus_vision_model", "hidden_size": s.width, "num_hidden_layers": s.depth,
              "num_attention_heads": s.num_heads, "num_channels": 3, "image_size": s.image_size,
              "patch_size": s.patch_size, "hidden_act": "gelu", "layer_norm_eps": s.layer_norm_eps,
              "mlp_ratio": s.mlp_ratio, "attention_bias": True, "use_qk_norm": False,
              "projection_dim": d, "depth": 2, "num_image_tokens": s.num_patches}
    vq = {"model_type": "janus_vqgan", "embed_dim": v.embed_dim, "num_embeddings": v.codebook_size,
          "double_latent": False, "latent_channels": v.z_channels, "in_channels": 3, "out_channels": 3,
          "base_channels": v.base_channels, "channel_multiplier": list(v.channel_mult),
          "num_res_blocks": v.num_res_blocks, "num_patches": cfg.gen_grid, "projection_dim": d,
          "num_hidden_layers": 2, "hidden_act": "gelu", "image_token_embed_dim": d}
    return {"architectures": [ARCHITECTURE], "model_type": "janus", "dtype": torch_dtype,
            "text_config": text, "vision_config": vision, "vq_config": vq,
            "image_token_id": IMAGE_TOKEN_ID, "tie_word_embeddings": cfg.llm.tie_word_embeddings}
