"""``janusflow info``: parameter count per component and FLOPs per training token, computed
from abstract shapes only (``nnx.eval_shape``), so the 1.3B model costs no memory."""

from __future__ import annotations

import jax
from flax import nnx

from janusflow.perf import flops
from janusflow.configs.schema import ModelConfig
from janusflow.configs.variants import AUTOREGRESSIVE, RECTIFIED_FLOW
from janusflow.models.build import abstract_model

# attribute in our module -> the official checkpoint prefix it corresponds to
OFFICIAL_NAMES = {
    "language_model": "language_model",
    "und_encoder": "vision_und_enc_model",
    "und_aligner": "vision_und_enc_aligner",
    "beg_of_und_embed": "beg_of_und_embed",
    "gen_encoder": "vision_gen_enc_model",
    "gen_aligner": "vision_gen_enc_aligner",
    "gen_decoder": "vision_gen_dec_model",
    "gen_decoder_aligner": "vision_gen_dec_aligner",
    "gen_decoder_norm": "vision_gen_dec_aligner_norm",
    "und_gen_encoder": "(ablation C: separate gen-style und encoder)",
    "repa_projector": "(training only, not in the checkpoint)",
}
JANUS_PRO_NAMES = {
    "language_model": "language_model",
    "und_encoder": "vision_model",
    "und_aligner": "aligner",
    "gen_vision": "gen_vision_model (VQ-16 tokenizer)",
    "gen_embed": "gen_embed",
    "gen_aligner": "gen_aligner",
    "gen_head": "gen_head",
}


# each official checkpoint layout's names (a generation head's ``layout``)
LAYOUT_NAMES = {RECTIFIED_FLOW.layout: OFFICIAL_NAMES, AUTOREGRESSIVE.layout: JANUS_PRO_NAMES}


def official_names(cfg: ModelConfig) -> dict:
    return LAYOUT_NAMES[cfg.head.layout]



def _size(tree) -> int:
    total = 0
    for leaf in jax.tree.leaves(tree):
        n = 1
        for s in leaf.shape:
            n *= int(s)
        total += n
    return total


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    """{component: parameter count}, plus 'und_encoder.attn_pool', 'checkpoint_total'
    (everything the released checkpoint holds) and 'total'."""
    model = abstract_model(cfg)
    state = nnx.state(model, nnx.Param)
    counts = {}
    for name in official_names(cfg):
        if name in state:
            counts[name] = _size(state[name])
    if "und_encoder" in state and "attn_pool" in state["und_encoder"]:
        counts["und_encoder.attn_pool"] = _size(state["und_encoder"]["attn_pool"])
    counts["total"] = _size(state)
    counts["checkpoint_total"] = counts["total"] - counts.get("repa_projector", 0)
    return counts


def report(cfg: ModelConfig, seq_len: int = 4096, prompt_len: int = 64) -> str:
    counts = param_counts(cfg)
    lines = [f"{'component':22s} {'official name':42s} {'parameters':>15s}"]
    for name, official in official_names(cfg).items():
        if name in counts:
            lines.append(f"{name:22s} {official:42s} {counts[name]:>15,}")
    if "und_encoder.attn_pool" in counts:
        lines.append(f"{'  of which attn_pool':22s} {'(unused by JanusFlow / Janus-Pro)':42s} "
                     f"{counts['und_encoder.attn_pool']:>15,}")
    lines.append(f"{'checkpoint total':65s} {counts['checkpoint_total']:>15,}")
    lines.append(f"{'total incl. training-only':65s} {counts['total']:>15,}")
    lines.append("")
    text = flops.text_training_flops_per_token(cfg, seq_len)
    lines.append(f"training FLOPs per text/understanding token (context {seq_len}): {text:.4g}")
    sample_flops = flops.GENERATION_SAMPLE_FLOPS.get(cfg.gen_head)
    if cfg.gen_enabled and sample_flops is not None:
        g = sample_flops(cfg, prompt_len)
        lines.append(f"training FLOPs per generation sample ({g['tokens']} tokens, prompt {prompt_len}): "
                     f"{g['total']:.4g} = {g['per_token']:.4g} per token")
        parts = ", ".join(f"{k} {v:.3g}" for k, v in g.items() if k not in ("total", "per_token", "tokens"))
        lines.append(f"  breakdown: {parts}")
    return "\n".join(lines)
