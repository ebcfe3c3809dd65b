"""Named model presets: ``tiny`` (tests, seconds on CPU) and ``janusflow_1_3b`` (official sizes).

The 1.3B values are the public architecture (see ``shared/spec/JANUSFLOW.md`` section 1); the
fields marked UNCONFIRMED there are overwritten from ``config.json`` when weights are imported.
"""

from __future__ import annotations

from janusflow.configs.schema import (ConfigError, GenCodecConfig, LLMConfig, ModelConfig, SiglipConfig,
                              VAEConfig, VQConfig)
from janusflow.configs.variants import AUTOREGRESSIVE


def _build(overrides, **fields) -> ModelConfig:
    return ModelConfig(**{**fields, **overrides})


def janusflow_1_3b(**overrides) -> ModelConfig:
    return _build(
        llm=LLMConfig(vocab_size=102400, hidden_size=2048, intermediate_size=5632, num_layers=24,
                      num_heads=16, num_kv_heads=16, rms_norm_eps=1e-6, rope_theta=10000.0,
                      max_position_embeddings=4096),
        siglip=SiglipConfig(image_size=384, patch_size=16, width=1024, num_layers=24, num_heads=16,
                            mlp_ratio=4.0, select_layer=-1, attn_pool=True),
        gen_codec=GenCodecConfig(channels=768, kernel_size=2, stride=2, num_blocks=2),
        vae=VAEConfig(kind="kl"),
        # scanned layers: the 24-layer stage-2 plan compiles with 2.7x less CPU time and 44%
        # less XLA:CPU temporary memory than unrolled (experiments/tpu_plans.md)
        image_size=384, repa_layer=6, repa_hidden=2048, scan_layers=True, overrides=overrides)


def tiny(**overrides) -> ModelConfig:
    """A few hundred thousand parameters; 32 px images, identity ("pixel") latent, 8x8 tokens."""
    return _build(
        llm=LLMConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=4,
                      num_heads=4, num_kv_heads=2, max_position_embeddings=512),
        siglip=SiglipConfig(image_size=32, patch_size=4, width=32, num_layers=2, num_heads=2,
                            mlp_ratio=2.0, attn_pool=True),
        gen_codec=GenCodecConfig(channels=32, kernel_size=4, stride=4, num_blocks=2,
                                 decoder_patch=2, decoder_upsamples=2),
        # Shape images are mostly flat gray background (0 in [-1, 1]); over the 32 px training
        # images pixels have std 0.32 (measured on 300 scenes). Scaling the "latent" by 4, as
        # SD's VAE scaling factor does for its latents, gives std ~1.3, about the noise's; decoding
        # divides it back out. (Scale 1.5 with t ~ LN(0, 1) scored the same as 4 with LN(-0.5, 1).)
        vae=VAEConfig(kind="pixel", scaling_factor=4.0),
        # trained, as the tiny runs were measured with (ModelConfig.beg_of_und_embed)
        beg_of_und_embed="learned", image_size=32, repa_layer=2, repa_hidden=64, overrides=overrides)


def tiny_kl(**overrides) -> ModelConfig:
    """``tiny`` with a small real AutoencoderKL (2 levels) instead of the identity latent."""
    return tiny(vae=VAEConfig(kind="kl", block_out_channels=(16, 32), layers_per_block=1,
                              norm_num_groups=8, scaling_factor=1.0),
                gen_codec=GenCodecConfig(channels=32, kernel_size=2, stride=2, num_blocks=2),
                **{"vae_random_ok": True, **overrides})   # no pretrained VAE of this size exists


# ------------------------------------------------------------------------------- Janus-Pro
# Sizes of the released config.json files (deepseek-ai/Janus-Pro-1B, -7B): the language_config
# (LLaMA layout, context 16384), SigLIP-L/16-384 (select_layer -1), VQ-16, mlp_gelu aligners of
# depth 2 and gen_head's hidden width equal to the LLM's. Fields the release settles are
# overwritten from config.json on import.
_SIGLIP_L_384 = SiglipConfig(image_size=384, patch_size=16, width=1024, num_layers=24, num_heads=16,
                             mlp_ratio=4.0, select_layer=-1, attn_pool=True)


def janus_pro_1b(**overrides) -> ModelConfig:
    return _build(
        llm=LLMConfig(vocab_size=102400, hidden_size=2048, intermediate_size=5632, num_layers=24,
                      num_heads=16, num_kv_heads=16, rms_norm_eps=1e-6, rope_theta=10000.0,
                      max_position_embeddings=16384),
        gen_head=AUTOREGRESSIVE.name, siglip=_SIGLIP_L_384, vq=VQConfig(), image_size=384, repa=False,
        scan_layers=True, overrides=overrides)


def janus_pro_7b(**overrides) -> ModelConfig:
    return janus_pro_1b(**{"llm": LLMConfig(
        vocab_size=102400, hidden_size=4096, intermediate_size=11008, num_layers=30, num_heads=32,
        num_kv_heads=32, rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=16384),
        **overrides})


def tiny_janus_pro(**overrides) -> ModelConfig:
    """``tiny``'s LLM and SigLIP with a 3-level VQ tokenizer (4x downsampling, 64 codes):
    32 px images are 8x8 = 64 image tokens."""
    return tiny(**{"gen_head": AUTOREGRESSIVE.name, "repa": False, "beg_of_und_embed": "official",
                   "vq": VQConfig(codebook_size=64, embed_dim=8, z_channels=32, base_channels=32,
                                  channel_mult=(1, 1, 2), num_res_blocks=1, norm_groups=8),
                   **overrides})


PRESETS = {"tiny": tiny, "tiny_kl": tiny_kl, "janusflow_1_3b": janusflow_1_3b,
           "janus_pro_1b": janus_pro_1b, "janus_pro_7b": janus_pro_7b, "tiny_janus_pro": tiny_janus_pro}


def get_preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name](**overrides)
