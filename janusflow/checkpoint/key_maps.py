"""Every checkpoint layout the models are read from and written to, in one place: the torch key
of each tensor and where it lives in our NNX tree (``{torch_key: (nnx_path, transform)}``, the
transforms in :mod:`janusflow.checkpoint.torch_layout`). The models know nothing of these names.

  LLM        HF ``LlamaForCausalLM``                        :func:`llm_key_map`
  SigLIP     the official timm ``VisionTransformer``        :func:`siglip_key_map`
             transformers ``SiglipVisionModel``             :func:`hf_siglip_key_map`; its separate
             q, k, v (timm fuses them: no per-tensor transform can express that) go through
             :func:`hf_siglip_to_timm_state_dict` first
  gen codec  the official ShallowUViT encoder / decoder     :func:`gen_encoder_key_map`, :func:`gen_decoder_key_map`
  VAE        diffusers ``AutoencoderKL``                    :func:`vae_key_map` (old attention names:
             :func:`normalize_vae_keys`)
  JanusFlow  the official release, whole model              :func:`janusflow_key_map`
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Mapping

import numpy as np

from janusflow.checkpoint.torch_layout import CheckpointMismatch, export_state_dict, load_state_dict
from janusflow.checkpoint.hf_config import check_official_layout
from janusflow.checkpoint.tensor_io import to_numpy
from janusflow.configs.schema import GenCodecConfig, LLMConfig, ModelConfig, SiglipConfig, VAEConfig
from janusflow.models.siglip import SiglipVisionTower


# ------------------------------------------------------------------------------------ LLM
def derived_buffer(key: str) -> bool:
    # RoPE tables that transformers < 4.31 saved in checkpoints: recomputed, not weights.
    return key.endswith("rotary_emb.inv_freq")


def llm_key_map(cfg: LLMConfig, prefix: str = "") -> dict:
    """HF ``LlamaForCausalLM`` keys (``prefix`` = "language_model." inside JanusFlow)."""
    m = {f"{prefix}model.embed_tokens.weight": (("embed_tokens",), "plain"),
         f"{prefix}model.norm.weight": (("norm", "scale"), "plain")}
    if not cfg.tie_word_embeddings:
        m[f"{prefix}lm_head.weight"] = (("lm_head", "kernel"), "linear")
    for i in range(cfg.num_layers):
        p = f"{prefix}model.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            m[f"{p}self_attn.{n}.weight"] = (("layers", i, "self_attn", n, "kernel"), "linear")
        for n in ("gate_proj", "up_proj", "down_proj"):
            m[f"{p}mlp.{n}.weight"] = (("layers", i, "mlp", n, "kernel"), "linear")
        m[f"{p}input_layernorm.weight"] = (("layers", i, "input_layernorm", "scale"), "plain")
        m[f"{p}post_attention_layernorm.weight"] = (("layers", i, "post_attention_layernorm", "scale"), "plain")
    return m


# --------------------------------------------------------------------------------- SigLIP
def linear_keys(m, tkey, path, transform="linear"):
    """A Linear's weight and bias: torch ``tkey.weight/bias`` -> our ``path/kernel, bias``."""
    m[f"{tkey}.weight"] = (path + ("kernel",), transform)
    m[f"{tkey}.bias"] = (path + ("bias",), "plain")


def norm_keys(m, tkey, path):
    """A LayerNorm/GroupNorm's weight and bias -> our ``scale, bias``."""
    m[f"{tkey}.weight"] = (path + ("scale",), "plain")
    m[f"{tkey}.bias"] = (path + ("bias",), "plain")


def siglip_key_map(cfg: SiglipConfig, prefix: str = "") -> dict:
    """Official timm layout (JanusFlow prefix: ``vision_und_enc_model.vision_tower.``)."""
    m: dict = {}
    P = prefix
    m[f"{P}patch_embed.proj.weight"] = (("patch_embed", "kernel"), "conv")
    m[f"{P}patch_embed.proj.bias"] = (("patch_embed", "bias"), "plain")
    m[f"{P}pos_embed"] = (("pos_embed",), "plain")
    for i in range(cfg.depth):
        t, o = f"{P}blocks.{i}", ("blocks", i)
        norm_keys(m, f"{t}.norm1", o + ("norm1",))
        linear_keys(m, f"{t}.attn.qkv", o + ("attn", "qkv"))
        linear_keys(m, f"{t}.attn.proj", o + ("attn", "proj"))
        norm_keys(m, f"{t}.norm2", o + ("norm2",))
        linear_keys(m, f"{t}.mlp.fc1", o + ("mlp", "fc1"))
        linear_keys(m, f"{t}.mlp.fc2", o + ("mlp", "fc2"))
    norm_keys(m, f"{P}norm", ("norm",))
    if cfg.attn_pool:
        t, o = f"{P}attn_pool", ("attn_pool",)
        m[f"{t}.latent"] = (o + ("latent",), "plain")
        for name in ("q", "kv", "proj"):
            linear_keys(m, f"{t}.{name}", o + (name,))
        norm_keys(m, f"{t}.norm", o + ("norm",))
        linear_keys(m, f"{t}.mlp.fc1", o + ("mlp", "fc1"))
        linear_keys(m, f"{t}.mlp.fc2", o + ("mlp", "fc2"))
    return m


def hf_siglip_key_map(cfg: SiglipConfig, prefix: str = "") -> dict:
    """transformers ``SiglipVisionModel`` layout, expressed against the timm layout.

    Returns ``{hf_key: ((timm_key, timm_rows, hf_rows), ...)}``: the HF tensor's rows
    ``hf_rows`` (a (start, stop) range along dim 0, None = all) equal rows ``timm_rows`` of the
    timm tensor. timm keys carry no prefix. Not a :func:`siglip_key_map` -- fused tensors need
    :func:`hf_siglip_to_timm_state_dict`. transformers 5 keys have no ``vision_model.`` prefix;
    hub checkpoints saved from ``SiglipModel`` (and transformers 4) do: pass
    ``prefix="vision_model."`` for those. HF position embeddings are (N, D), timm's (1, N, D).
    The HF pooling head (probe, ``nn.MultiheadAttention`` with packed q|k|v ``in_proj``,
    layernorm, mlp) computes exactly what timm's ``AttentionPoolLatent`` does.
    """
    d = cfg.width
    whole = lambda tk: ((tk, None, None),)                                        # noqa: E731
    m: dict = {}
    P = prefix

    def same(hk, tk, bias=True):
        suffixes = ("weight", "bias") if bias else ("weight",)
        for s in suffixes:
            m[f"{P}{hk}.{s}"] = whole(f"{tk}.{s}")

    same("embeddings.patch_embedding", "patch_embed.proj")
    m[f"{P}embeddings.position_embedding.weight"] = whole("pos_embed")
    for i in range(cfg.depth):
        h, t = f"encoder.layers.{i}", f"blocks.{i}"
        same(f"{h}.layer_norm1", f"{t}.norm1")
        for j, name in enumerate("qkv"):
            for s in ("weight", "bias"):
                m[f"{P}{h}.self_attn.{name}_proj.{s}"] = ((f"{t}.attn.qkv.{s}", (j * d, (j + 1) * d), None),)
        same(f"{h}.self_attn.out_proj", f"{t}.attn.proj")
        same(f"{h}.layer_norm2", f"{t}.norm2")
        same(f"{h}.mlp.fc1", f"{t}.mlp.fc1")
        same(f"{h}.mlp.fc2", f"{t}.mlp.fc2")
    same("post_layernorm", "norm")
    if cfg.attn_pool:
        m[f"{P}head.probe"] = whole("attn_pool.latent")
        for s, hs in (("weight", "in_proj_weight"), ("bias", "in_proj_bias")):
            m[f"{P}head.attention.{hs}"] = ((f"attn_pool.q.{s}", None, (0, d)),
                                            (f"attn_pool.kv.{s}", None, (d, 3 * d)))
        same("head.attention.out_proj", "attn_pool.proj")
        same("head.layernorm", "attn_pool.norm")
        same("head.mlp.fc1", "attn_pool.mlp.fc1")
        same("head.mlp.fc2", "attn_pool.mlp.fc2")
    return m


def _rows(a, r):
    return a if r is None else a[r[0]:r[1]]


def _assemble(parts, key):
    """Concatenate (rows, array) pieces that tile dim 0 of one tensor, in row order."""
    parts = sorted(parts, key=lambda p: -1 if p[0] is None else p[0][0])
    if parts[0][0] is None:
        if len(parts) != 1:
            raise CheckpointMismatch(f"{key}: a whole-tensor piece overlaps other pieces")
        return parts[0][1]
    pos = 0
    for r, a in parts:
        if r[0] != pos or r[1] - r[0] != a.shape[0]:
            raise CheckpointMismatch(f"{key}: pieces do not tile rows (gap/overlap at row {pos}, "
                                     f"or a piece of {a.shape[0]} rows for range {r})")
        pos = r[1]
    return np.concatenate([a for _, a in parts], axis=0)


_HF_LAYER = "encoder.layers."


def hf_siglip_to_timm_state_dict(sd: Mapping, cfg: SiglipConfig, *, hf_prefix: str = "",
                                 timm_prefix: str = "") -> dict:
    """transformers ``SiglipVisionModel`` state dict -> official timm layout (numpy arrays).

    Encoder layers at index >= ``cfg.depth`` are dropped (the official tower never builds
    them), as is ``head.*`` when ``cfg.attn_pool`` is False; any other unknown or missing key
    raises :class:`CheckpointMismatch`.
    """
    kmap = hf_siglip_key_map(cfg, hf_prefix)
    missing = [k for k in kmap if k not in sd]
    unexpected = []
    for k in sd:
        if k in kmap:
            continue
        rest = k[len(hf_prefix):] if k.startswith(hf_prefix) else None
        if rest is not None and rest.startswith(_HF_LAYER):
            idx = rest[len(_HF_LAYER):].split(".", 1)[0]
            if idx.isdigit() and cfg.depth <= int(idx) < cfg.num_layers:
                continue
        if rest is not None and rest.startswith("head.") and not cfg.attn_pool:
            continue
        unexpected.append(k)
    if missing or unexpected:
        raise CheckpointMismatch("HF SigLIP -> timm: " + "; ".join(
            s for s in (("missing keys: " + ", ".join(missing)) if missing else "",
                        ("unexpected keys: " + ", ".join(unexpected)) if unexpected else "") if s))
    pieces = defaultdict(list)
    for hk, targets in kmap.items():
        a = to_numpy(sd[hk])
        for tk, t_rows, h_rows in targets:
            pieces[tk].append((t_rows, _rows(a, h_rows)))
    out = {}
    for tk, parts in pieces.items():
        a = _assemble(parts, tk)
        if tk == "pos_embed":
            a = a.reshape(1, *a.shape)
        out[timm_prefix + tk] = a
    return out


def timm_to_hf_siglip_state_dict(sd: Mapping, cfg: SiglipConfig, *, timm_prefix: str = "",
                                 hf_prefix: str = "") -> dict:
    """Official timm layout -> transformers ``SiglipVisionModel`` (numpy arrays).

    The result has ``cfg.depth`` encoder layers: load it into an HF model configured with
    ``num_hidden_layers=cfg.depth`` (and ``vision_use_head=cfg.attn_pool``).
    """
    kmap = hf_siglip_key_map(cfg, hf_prefix)
    needed = {tk for targets in kmap.values() for tk, _, _ in targets}
    expected = {timm_prefix + tk for tk in needed}
    missing = sorted(expected - set(sd))
    unexpected = sorted(set(sd) - expected)
    if missing or unexpected:
        raise CheckpointMismatch("timm -> HF SigLIP: " + "; ".join(
            s for s in (("missing keys: " + ", ".join(missing)) if missing else "",
                        ("unexpected keys: " + ", ".join(unexpected)) if unexpected else "") if s))
    out = {}
    for hk, targets in kmap.items():
        parts = []
        for tk, t_rows, h_rows in targets:
            a = to_numpy(sd[timm_prefix + tk])
            if tk == "pos_embed":
                a = a.reshape(a.shape[1:])
            parts.append((h_rows, _rows(a, t_rows)))
        out[hk] = _assemble(parts, hk)
    return out


def load_hf_siglip(tower: SiglipVisionTower, sd: Mapping, *, prefix: str = "", dtype=None) -> None:
    """Load a transformers ``SiglipVisionModel`` state dict into ``tower`` (strict)."""
    timm_sd = hf_siglip_to_timm_state_dict(sd, tower.cfg, hf_prefix=prefix)
    load_state_dict(tower, timm_sd, siglip_key_map(tower.cfg), dtype=dtype)


def export_hf_siglip(tower: SiglipVisionTower, *, prefix: str = "") -> dict:
    """``tower``'s parameters as a transformers ``SiglipVisionModel`` state dict (numpy)."""
    timm_sd = export_state_dict(tower, siglip_key_map(tower.cfg))
    return timm_to_hf_siglip_state_dict(timm_sd, tower.cfg, hf_prefix=prefix)


# ------------------------------------------------------------------------------ gen codec
def _block_keys(cfg: GenCodecConfig, prefix: str, path: tuple) -> dict:
    m = {f"{prefix}depthwise.weight": (path + ("depthwise", "kernel"), "conv"),
         f"{prefix}norm.weight": (path + ("norm", "scale"), "plain"),
         f"{prefix}channelwise_linear_1.weight": (path + ("linear_1", "kernel"), "linear"),
         f"{prefix}channelwise_norm.weight": (path + ("grn_gamma",), "grn"),
         f"{prefix}channelwise_norm.bias": (path + ("grn_beta",), "grn"),
         f"{prefix}channelwise_linear_2.weight": (path + ("linear_2", "kernel"), "linear"),
         f"{prefix}cond_embeds_mapper.weight": (path + ("cond_embeds_mapper", "kernel"), "linear")}
    if cfg.use_bias:
        for t, ours in (("depthwise", "depthwise"), ("channelwise_linear_1", "linear_1"),
                        ("channelwise_linear_2", "linear_2"),
                        ("cond_embeds_mapper", "cond_embeds_mapper")):
            m[f"{prefix}{t}.bias"] = (path + (ours, "bias"), "plain")
    return m


def gen_encoder_key_map(cfg: GenCodecConfig, prefix: str = "") -> dict:
    """Official ``ShallowUViTEncoder`` keys. ``time_proj`` (diffusers ``Timesteps``) has no
    parameters, so it has no keys."""
    m = {f"{prefix}time_embed.linear_1.weight": (("time_linear_1", "kernel"), "linear"),
         f"{prefix}time_embed.linear_2.weight": (("time_linear_2", "kernel"), "linear"),
         f"{prefix}in_conv.weight": (("in_conv", "kernel"), "conv"),
         f"{prefix}in_conv.bias": (("in_conv", "bias"), "plain")}
    if cfg.use_bias:
        m[f"{prefix}time_embed.linear_1.bias"] = (("time_linear_1", "bias"), "plain")
        m[f"{prefix}time_embed.linear_2.bias"] = (("time_linear_2", "bias"), "plain")
    for i in range(cfg.num_blocks):
        m.update(_block_keys(cfg, f"{prefix}mid_block.res_blocks.{i}.", ("blocks", i)))
    return m


def gen_decoder_key_map(cfg: GenCodecConfig, prefix: str = "") -> dict:
    """Official ``ShallowUViTDecoder`` keys."""
    m = {f"{prefix}input_norm.weight": (("input_norm", "scale"), "plain")}
    for i in range(cfg.num_blocks):
        m.update(_block_keys(cfg, f"{prefix}mid_block.res_blocks.{i}.", ("blocks", i)))
    for i in range(cfg.decoder_upsamples):
        p, path = f"{prefix}out_convs.{i}.", ("out_convs", i)
        m[p + "norm.weight"] = (path + ("norm", "scale"), "plain")
        m[p + "unpatch_conv.weight"] = (path + ("unpatch_conv", "kernel"), "conv")
        if cfg.use_bias:
            m[p + "unpatch_conv.bias"] = (path + ("unpatch_conv", "bias"), "plain")
    return m


# ------------------------------------------------------------------------------------ VAE
def _add(m: dict, prefix: str, key: str, kind: str):
    """One torch submodule ``key`` of type ``kind`` ('conv' | 'norm' | 'linear')."""
    path = tuple(int(p) if p.isdigit() else p for p in key.split("."))
    w_name, w_tr = {"conv": ("kernel", "conv"), "norm": ("scale", "plain"),
                    "linear": ("kernel", "linear")}[kind]
    m[f"{prefix}{key}.weight"] = (path + (w_name,), w_tr)
    m[f"{prefix}{key}.bias"] = (path + ("bias",), "plain")


def _resnet_keys(m, prefix, key, cin, cout):
    for name, kind in (("norm1", "norm"), ("conv1", "conv"), ("norm2", "norm"), ("conv2", "conv")):
        _add(m, prefix, f"{key}.{name}", kind)
    if cin != cout:
        _add(m, prefix, f"{key}.conv_shortcut", "conv")


def _mid_keys(m, prefix, key, c, attention):
    for i in range(2):
        _resnet_keys(m, prefix, f"{key}.resnets.{i}", c, c)
    if attention:
        a = f"{key}.attentions.0"
        _add(m, prefix, f"{a}.group_norm", "norm")
        for name in ("to_q", "to_k", "to_v", "to_out.0"):
            _add(m, prefix, f"{a}.{name}", "linear")


def vae_key_map(cfg: VAEConfig, prefix: str = "") -> dict[str, tuple[tuple, str]]:
    """diffusers ``AutoencoderKL`` state-dict keys (current names) -> NNX paths.

    Checkpoints with the old attention names go through :func:`normalize_vae_keys` first.
    The pixel VAE has no parameters, hence an empty map.
    """
    if cfg.kind == "pixel":
        return {}
    ch, n = tuple(cfg.block_out_channels), cfg.layers_per_block
    m: dict[str, tuple[tuple, str]] = {}
    _add(m, prefix, "encoder.conv_in", "conv")
    for i, c in enumerate(ch):
        for j in range(n):
            cin = ch[max(i - 1, 0)] if j == 0 else c
            _resnet_keys(m, prefix, f"encoder.down_blocks.{i}.resnets.{j}", cin, c)
        if i < len(ch) - 1:
            _add(m, prefix, f"encoder.down_blocks.{i}.downsamplers.0.conv", "conv")
    _mid_keys(m, prefix, "encoder.mid_block", ch[-1], cfg.mid_block_add_attention)
    _add(m, prefix, "encoder.conv_norm_out", "norm")
    _add(m, prefix, "encoder.conv_out", "conv")

    rev = ch[::-1]
    _add(m, prefix, "decoder.conv_in", "conv")
    _mid_keys(m, prefix, "decoder.mid_block", rev[0], cfg.mid_block_add_attention)
    for i, c in enumerate(rev):
        for j in range(n + 1):
            cin = rev[max(i - 1, 0)] if j == 0 else c
            _resnet_keys(m, prefix, f"decoder.up_blocks.{i}.resnets.{j}", cin, c)
        if i < len(rev) - 1:
            _add(m, prefix, f"decoder.up_blocks.{i}.upsamplers.0.conv", "conv")
    _add(m, prefix, "decoder.conv_norm_out", "norm")
    _add(m, prefix, "decoder.conv_out", "conv")

    if cfg.use_quant_conv:
        _add(m, prefix, "quant_conv", "conv")
    if cfg.use_post_quant_conv:
        _add(m, prefix, "post_quant_conv", "conv")
    return m


_OLD_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_ATTN_KEY = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn|to_q|to_k|to_v|to_out\.0)"
                       r"\.(weight|bias)$")


def normalize_vae_keys(state_dict: Mapping) -> dict:
    """Rename the pre-0.14 diffusers attention names (``query``, ``key``, ``value``,
    ``proj_attn``) to the current ones and squeeze 1x1-conv attention weights (C, C, 1, 1)
    to Linear (C, C), the two legacy forms found in published SDXL-VAE files. Any key
    prefix is kept; other keys pass through untouched. Returns a new dict.
    """
    out = {}
    for k, v in state_dict.items():
        mt = _ATTN_KEY.match(k)
        if mt is not None:
            base, name, leaf = mt.groups()
            k = f"{base}.{_OLD_ATTN.get(name, name)}.{leaf}"
            if leaf == "weight" and len(v.shape) == 4:
                if tuple(v.shape[2:]) != (1, 1):
                    raise ValueError(f"{mt.string}: attention weight of shape {tuple(v.shape)} is "
                                     "neither Linear (C, C) nor a 1x1 conv (C, C, 1, 1)")
                v = v[:, :, 0, 0]
        if k in out:
            raise ValueError(f"state dict has both the old and the new name for {k}")
        out[k] = v
    return out


# ------------------------------------------------------------------- the whole model
def janusflow_key_map(cfg: ModelConfig) -> dict:
    """Every official checkpoint key -> (our parameter path, transform), whole model."""
    check_official_layout(cfg)
    m: dict = {}

    def add(sub: Mapping, root: str):
        for k, (p, tr) in sub.items():
            m[k] = ((root,) + tuple(p), tr)

    def linear(tkey: str, root: str):
        m[f"{tkey}.weight"] = ((root, "kernel"), "linear")
        m[f"{tkey}.bias"] = ((root, "bias"), "plain")

    add(llm_key_map(cfg.llm, "language_model."), "language_model")
    add(siglip_key_map(cfg.siglip, "vision_und_enc_model.vision_tower."), "und_encoder")
    linear("vision_und_enc_aligner", "und_aligner")
    m["beg_of_und_embed"] = (("beg_of_und_embed",), "squeeze:1,-1")
    add(gen_encoder_key_map(cfg.gen_codec, "vision_gen_enc_model."), "gen_encoder")
    linear("vision_gen_enc_aligner", "gen_aligner")
    add(gen_decoder_key_map(cfg.gen_codec, "vision_gen_dec_model."), "gen_decoder")
    m["vision_gen_dec_aligner_norm.weight"] = (("gen_decoder_norm", "scale"), "plain")
    linear("vision_gen_dec_aligner", "gen_decoder_aligner")
    return m
