"""Analytic FLOP counts (multiply-add = 2 FLOPs) used by ``info``, MFU and benchmarks.

Counted: every matmul/conv of the forward pass; training = 3x forward for trained parts
(backward = 2x forward) and 1x for frozen parts that run only forward (SigLIP as REPA target
in stages 1-2, the VAE). Norms, activations and softmax are left out (a few percent).
"""

from __future__ import annotations

from janusflow.config import GenCodecConfig, LLMConfig, ModelConfig, SiglipConfig


def llm_forward_per_token(c: LLMConfig, context: int, with_lm_head: bool) -> float:
    """Forward FLOPs of one token attending to ``context`` earlier tokens on average."""
    hd = c.dim_per_head
    proj = c.hidden_size * hd * (2 * c.num_heads + 2 * c.num_kv_heads)     # q, o + k, v
    mlp = 3 * c.hidden_size * c.intermediate_size
    attn = 2 * context * c.num_heads * hd                                    # QK^T and AV
    flops = c.num_layers * (2 * (proj + mlp) + 2 * attn)
    if with_lm_head:
        flops += 2 * c.hidden_size * c.vocab_size
    return float(flops)


def _convnext_block(channels: int, cond: int, ffn: int, pixels: int) -> float:
    return 2.0 * pixels * (49 * channels + 2 * ffn * channels * channels) + 2.0 * cond * 2 * channels


def gen_codec_forward_per_image(cfg: ModelConfig) -> float:
    g: GenCodecConfig = cfg.gen_codec
    d, grid, lat = cfg.llm.hidden_size, cfg.gen_grid, cfg.vae.channels
    px = grid * grid
    t_emb = 2.0 * (g.channels * d + d * d)
    enc = 2.0 * px * g.kernel_size ** 2 * lat * g.channels
    enc += g.num_blocks * _convnext_block(g.channels, d, g.res_ffn_factor, px)
    aligners = 2.0 * px * 2 * g.channels * d                                 # gen_aligner + dec aligner
    dec = g.num_blocks * _convnext_block(2 * g.channels, d, g.res_ffn_factor, px)
    dec += 2.0 * px * 2 * g.channels * lat * g.stride ** 2
    return t_emb + enc + aligners + dec


def siglip_forward_per_image(c: SiglipConfig) -> float:
    n, w = c.num_patches, c.width
    patch = 2.0 * n * 3 * c.patch_size ** 2 * w
    block = 2.0 * n * (4 * w * w + 2 * w * c.mlp_dim) + 4.0 * n * n * w
    return patch + c.depth * block


def repa_forward_per_image(cfg: ModelConfig) -> float:
    h = cfg.repa_hidden
    return 2.0 * cfg.num_gen_tokens * (cfg.llm.hidden_size * h + h * h + h * cfg.siglip.width)


def generation_sample_training_flops(cfg: ModelConfig, prompt_len: int = 64,
                                     siglip_trained: bool = False) -> dict:
    """FLOPs of one training step on one generation sample (prompt + t_emb + N image tokens)."""
    n = cfg.num_gen_tokens
    seq = prompt_len + 1 + n
    llm = 3 * seq * llm_forward_per_token(cfg.llm, seq // 2, with_lm_head=False)
    codec = 3 * gen_codec_forward_per_image(cfg)
    out = {"llm": llm, "gen_codec": codec, "tokens": seq}
    if cfg.repa:
        out["repa_projector"] = 3 * repa_forward_per_image(cfg)
        out["siglip_target"] = (3 if siglip_trained else 1) * siglip_forward_per_image(cfg.siglip)
    out["total"] = sum(v for k, v in out.items() if k != "tokens")
    out["per_token"] = out["total"] / seq
    return out


def text_training_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    return 3 * llm_forward_per_token(cfg.llm, seq_len // 2, with_lm_head=True)
