"""Analytic FLOP counts (multiply-add = 2 FLOPs) used by ``info``, MFU and benchmarks.

Counted: every matmul/conv of the forward pass; training = 3x forward for trained parts
(backward = 2x forward) and 1x for frozen parts that run only forward (SigLIP as REPA target
in stages 1-2, the VAE). Norms, activations and softmax are left out (a few percent).
"""

from __future__ import annotations

from janusflow.configs.schema import GenCodecConfig, LLMConfig, ModelConfig, SiglipConfig
from janusflow.configs.variants import RECTIFIED_FLOW


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


# each generation head's FLOPs per generation sample (heads not here: not modelled yet)
GENERATION_SAMPLE_FLOPS = {RECTIFIED_FLOW.name: generation_sample_training_flops}


def text_training_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    return 3 * llm_forward_per_token(cfg.llm, seq_len // 2, with_lm_head=True)


def train_step_flops(cfg, batch) -> dict:
    """Model FLOPs of one train step on ``batch`` (the train-step layout; arrays or
    ShapeDtypeStructs). Trained parts count 3x forward, frozen ones 1x (stage-dependent: SigLIP
    is trained only in stage 3; the LLM is frozen in stage 1 but still runs forward and
    backward (its activations carry the gradient to the aligners), so it counts 3x)."""
    m = cfg.model
    stage = cfg.train.stage
    siglip_mult = 3 if stage == 3 else 1
    out = {"llm": 0.0, "gen_codec": 0.0, "siglip": 0.0, "repa_projector": 0.0}
    for task in ("und", "text"):
        if task in batch:
            b, t = batch[task]["ids"].shape
            out["llm"] += 3 * b * t * llm_forward_per_token(m.llm, t // 2, with_lm_head=True)
            if task == "und" and m.und.reads_pixels:
                out["siglip"] += b * siglip_mult * siglip_forward_per_image(m.siglip)
    if "gen" in batch:
        b, prompt = batch["gen"]["prompt_ids"].shape
        seq = prompt + 1 + m.num_gen_tokens
        out["llm"] += 3 * b * seq * llm_forward_per_token(m.llm, seq // 2, with_lm_head=False)
        out["gen_codec"] += 3 * b * gen_codec_forward_per_image(m)
        if m.repa:
            out["repa_projector"] += 3 * b * repa_forward_per_image(m)
            out["siglip"] += b * siglip_mult * siglip_forward_per_image(m.siglip)
    out["total"] = sum(out.values())
    return out


def _conv(cin: int, cout: int, k: int, px: int) -> float:
    return 2.0 * px * k * k * cin * cout


def _vae_resnet(cin: int, cout: int, px: int) -> float:
    return _conv(cin, cout, 3, px) + _conv(cout, cout, 3, px) + (_conv(cin, cout, 1, px) if cin != cout else 0.0)


def _vae_mid(v, c: int, px: int) -> float:
    """Mid block: two resnets and (optionally) one-head attention over all ``px`` positions."""
    f = 2 * _vae_resnet(c, c, px)
    if v.mid_block_add_attention:
        f += 2.0 * px * 4 * c * c + 4.0 * px * px * c            # q, k, v, out + QK^T, AV
    return f


def vae_encode_forward_per_image(cfg: ModelConfig) -> float:
    """FLOPs of encoding one ``image_size`` image with the KL VAE encoder (0 for the identity
    pixel VAE). Frozen and outside the model: a train step that encodes its images runs this
    on top of the model FLOPs (precomputed latents remove it; see ``janusflow data latents``)."""
    v = cfg.vae
    if v.kind == "pixel":
        return 0.0
    ch = tuple(v.block_out_channels)
    res = cfg.image_size ** 2                            # pixels at the current resolution
    f = _conv(v.in_channels, ch[0], 3, res)
    for i, c in enumerate(ch):
        for j in range(v.layers_per_block):
            f += _vae_resnet(ch[max(i - 1, 0)] if j == 0 else c, c, res)
        if i < len(ch) - 1:
            res //= 4                                    # pad (0, 1) + stride-2 3x3: H/2 x W/2 out
            f += _conv(c, c, 3, res)
    f += _vae_mid(v, ch[-1], res) + _conv(ch[-1], 2 * v.latent_channels, 3, res)
    if v.use_quant_conv:
        f += _conv(2 * v.latent_channels, 2 * v.latent_channels, 1, res)
    return f


def train_step_vae_encode_flops(cfg, batch) -> float:
    """FLOPs of the frozen VAE encoder the step runs on top of the model FLOPs: every gen
    example that carries ``images`` (not precomputed ``latents``) and, for the gen-encoder
    understanding ablations, every und example with ``vae_images``. Not model FLOPs (MFU
    leaves it out); reported to show what encoding in the step costs."""
    m, n = cfg.model, 0
    if "gen" in batch and "latents" not in batch["gen"] and "images" in batch["gen"]:
        n += batch["gen"]["images"].shape[0]
    if ("und" in batch and m.und.reads_latents
            and "vae_latents" not in batch["und"] and "vae_images" in batch["und"]):
        n += batch["und"]["vae_images"].shape[0]
    return n * vae_encode_forward_per_image(m)


def vae_decode_forward_per_image(cfg: ModelConfig) -> float:
    """FLOPs of decoding one latent with the KL VAE decoder (0 for the identity pixel VAE)."""
    v = cfg.vae
    if v.kind == "pixel":
        return 0.0
    rev = tuple(v.block_out_channels)[::-1]
    res = cfg.latent_size ** 2                           # pixels at the current resolution

    def conv(cin, cout, k, px):
        return 2.0 * px * k * k * cin * cout

    def resnet(cin, cout, px):
        return conv(cin, cout, 3, px) + conv(cout, cout, 3, px) + (conv(cin, cout, 1, px) if cin != cout else 0.0)

    f = conv(v.latent_channels, v.latent_channels, 1, res) if v.use_post_quant_conv else 0.0
    f += conv(v.latent_channels, rev[0], 3, res) + 2 * resnet(rev[0], rev[0], res)
    if v.mid_block_add_attention:
        f += 2.0 * res * 4 * rev[0] ** 2 + 4.0 * res * res * rev[0]
    for i, c in enumerate(rev):
        for j in range(v.layers_per_block + 1):
            f += resnet(rev[max(i - 1, 0)] if j == 0 else c, c, res)
        if i < len(rev) - 1:
            res *= 4
            f += conv(c, c, 3, res)
    return f + conv(rev[-1], v.in_channels, 3, res)


def sampling_flops(cfg: ModelConfig, prompt_len: int, steps: int, solver: str = "euler",
                   cached: bool = True, cfg_rows: int = 2) -> dict:
    """Model FLOPs of sampling one image: ``cfg_rows`` LLM rows (2 with CFG) per velocity
    evaluation, ``steps`` evaluations (2x for Heun). Cached: the prompt is prefilled once and
    each evaluation runs the 1 + N new tokens against it; uncached: the whole sequence every
    time (the official demo). Causal attention counts the average context actually attended."""
    n_new = 1 + cfg.num_gen_tokens
    if cached:
        llm = n_new * llm_forward_per_token(cfg.llm, prompt_len + (n_new + 1) / 2, with_lm_head=False)
        prefill = cfg_rows * prompt_len * llm_forward_per_token(cfg.llm, (prompt_len + 1) / 2, False)
    else:
        seq = prompt_len + n_new
        llm = seq * llm_forward_per_token(cfg.llm, (seq + 1) / 2, with_lm_head=False)
        prefill = 0.0
    codec = gen_codec_forward_per_image(cfg)
    per_eval = cfg_rows * (llm + codec)
    evals = steps * (2 if solver == "heun" else 1)
    out = {"per_step_llm": cfg_rows * llm * evals / steps, "per_step_gen_codec": cfg_rows * codec * evals / steps,
           "per_step": per_eval * evals / steps, "prefill": prefill, "ode": per_eval * evals,
           "vae_decode": vae_decode_forward_per_image(cfg)}
    out["per_image"] = out["prefill"] + out["ode"] + out["vae_decode"]
    return out
