"""Official ``config.json`` <-> :class:`ModelConfig`: every field read is type-checked and every
error names the JSON path of the field (``config.json: language_config.hidden_size: ...``).

:func:`model_config_from_hf` / :func:`read_model_config` read the official JanusFlow structure
(LLM, SigLIP and gen-codec sizes; the rest from our ``janusflow_jax`` block or the defaults),
:func:`hf_config_from_model_config` writes it, :func:`llm_config_from_hf` reads a HF LLaMA config
and :func:`vae_config_from_diffusers` a diffusers ``AutoencoderKL`` one.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

from janusflow.configs import io as config_io
from janusflow.configs.variants import AUTOREGRESSIVE, RECTIFIED_FLOW, SIGLIP
from janusflow.configs.schema import (ConfigError, GenCodecConfig, LLMConfig, ModelConfig, SiglipConfig, VAEConfig,
                                      VQConfig)

EXTRA_KEY = "janusflow_jax"      # our full ModelConfig, for the fields config.json does not settle


_REQ = object()


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_KINDS = {
    "an int": lambda v: (_is_int(v), v),
    "a positive int": lambda v: (_is_int(v) and v > 0, v),
    "an int or null": lambda v: (v is None or _is_int(v), v),
    "a number": lambda v: (_is_num(v), float(v) if _is_num(v) else v),
    "a bool": lambda v: (isinstance(v, bool), v),
    "a string": lambda v: (isinstance(v, str), v),
    "a non-empty list of positive ints": lambda v: (
        isinstance(v, list) and len(v) > 0 and all(_is_int(x) and x > 0 for x in v), tuple(v) if isinstance(v, list) else v),
    "a list of 3 numbers or null": lambda v: (
        v is None or (isinstance(v, list) and len(v) == 3 and all(_is_num(x) for x in v)),
        None if v is None else tuple(float(x) for x in v) if isinstance(v, list) else v),
    "a positive int or a square [n, n] list": lambda v: (
        (_is_int(v) and v > 0) or (isinstance(v, list) and len(v) == 2 and _is_int(v[0]) and v[0] > 0 and v[0] == v[1]),
        v[0] if isinstance(v, list) else v),
}


class _J:
    """One object of a JSON config; every error names the JSON path of the offending field."""

    def __init__(self, d, path: str, file: str = "config.json"):
        if not isinstance(d, dict):
            raise ConfigError(f"{file}: {path or '<root>'}: expected an object, got {type(d).__name__}")
        self.d, self.path, self.file = d, path, file

    def where(self, k) -> str:
        return f"{self.path}.{k}" if self.path else k

    def err(self, k, msg) -> ConfigError:
        return ConfigError(f"{self.file}: {self.where(k)}: {msg}")

    def get(self, k, kind: str, default=_REQ):
        if k not in self.d:
            if default is _REQ:
                raise self.err(k, f"missing (expected {kind})")
            return default
        ok, v = _KINDS[kind](self.d[k])
        if not ok:
            raise self.err(k, f"expected {kind}, got {self.d[k]!r}")
        return v

    def sub(self, k, default=_REQ) -> "_J":
        if k not in self.d and default is not _REQ:
            return _J(default, self.where(k), self.file)
        if k not in self.d:
            raise self.err(k, "missing")
        return _J(self.d[k], self.where(k), self.file)

    def require(self, k, value, default):
        v = self.d.get(k, default)
        if type(v) is not type(value) or v != value:      # 0 is not False
            raise self.err(k, f"{v!r} is not supported (only {value!r})")


ConfigObject = _J        # the public name, for the config readers beside this module


def llm_config_from_hf(j: "_J | dict") -> LLMConfig:
    """``LlamaConfig`` fields -> :class:`LLMConfig`; absent fields take LlamaConfig's defaults,
    as the official code (``LlamaConfig(**language_config)``) would."""
    j = j if isinstance(j, _J) else _J(j, "")
    heads = j.get("num_attention_heads", "a positive int", 32)
    hidden = j.get("hidden_size", "a positive int", 4096)
    kv = j.get("num_key_value_heads", "an int or null", None)
    head_dim = j.get("head_dim", "an int or null", None)
    theta = j.get("rope_theta", "a number", 10000.0)
    if isinstance(j.d.get("rope_parameters"), dict):        # transformers >= 5 spelling
        rp = j.sub("rope_parameters")
        rp.require("rope_type", "default", "default")
        theta = rp.get("rope_theta", "a number", theta)
    elif j.d.get("rope_parameters") is not None:
        raise j.err("rope_parameters", "expected an object or null")
    if j.d.get("rope_scaling") is not None:
        raise j.err("rope_scaling", f"{j.d['rope_scaling']!r} is not supported (only null)")
    j.require("hidden_act", "silu", "silu")
    j.require("attention_bias", False, False)
    j.require("mlp_bias", False, False)
    if head_dim is not None and head_dim * heads == hidden:
        head_dim = None
    try:
        return LLMConfig(
            vocab_size=j.get("vocab_size", "a positive int", 32000), hidden_size=hidden,
            intermediate_size=j.get("intermediate_size", "a positive int", 11008),
            num_layers=j.get("num_hidden_layers", "a positive int", 32), num_heads=heads,
            num_kv_heads=heads if kv is None else kv, head_dim=head_dim,
            rms_norm_eps=j.get("rms_norm_eps", "a number", 1e-6), rope_theta=theta,
            max_position_embeddings=j.get("max_position_embeddings", "a positive int", 2048),
            tie_word_embeddings=j.get("tie_word_embeddings", "a bool", False))
    except ConfigError as e:
        raise ConfigError(f"{j.file}: {j.path or '<root>'}: {e}") from None


_LLM_HF_NAMES = {"num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
                 "num_kv_heads": "num_key_value_heads"}

# Official ``siglip_vit.SigLIP_MODEL_CONFIG`` (all use global_pool="map": an attn_pool head).
SIGLIP_MODELS = {
    "siglip_so400m_patch14_384": dict(patch_size=14, width=1152, num_layers=27, num_heads=16, mlp_ratio=3.7362),
    "siglip_so400m_patch14_224": dict(patch_size=14, width=1152, num_layers=27, num_heads=16, mlp_ratio=3.7362),
    "siglip_large_patch16_384": dict(patch_size=16, width=1024, num_layers=24, num_heads=16, mlp_ratio=4.0),
    "siglip_large_patch16_256": dict(patch_size=16, width=1024, num_layers=24, num_heads=16, mlp_ratio=4.0),
}
# Our extension for sizes outside that table (tiny test models): explicit keys in params.
_SIGLIP_SIZE_KEYS = {"patch_size": "patch_size", "width": "width", "layers": "num_layers",
                     "heads": "num_heads", "mlp_ratio": "mlp_ratio"}
CUSTOM_SIGLIP = "siglip_custom"  # not in the official table: sizes given explicitly


def _siglip_from_hf(v: _J, base: SiglipConfig, preprocessor: Optional[dict]) -> SiglipConfig:
    if "CLIPVisionTower" not in v.get("cls", "a string"):
        raise v.err("cls", f"{v.d['cls']!r}: only CLIPVisionTower (SigLIP) is supported")
    p = v.sub("params", {})
    name = p.get("model_name", "a string", "siglip_large_patch16_384")
    if not name.startswith("siglip"):
        raise p.err("model_name", f"{name!r}: only SigLIP towers are supported")
    explicit = {ours: p.get(k, "a number" if k == "mlp_ratio" else "a positive int")
                for k, ours in _SIGLIP_SIZE_KEYS.items() if k in p.d}
    if name in SIGLIP_MODELS:
        sizes = dict(SIGLIP_MODELS[name])
        for k, ours in _SIGLIP_SIZE_KEYS.items():
            if ours in explicit and explicit[ours] != sizes[ours]:
                raise p.err(k, f"{explicit[ours]} contradicts model_name {name!r} ({sizes[ours]})")
        attn_pool = True
    else:
        absent = [k for k, ours in _SIGLIP_SIZE_KEYS.items() if ours not in explicit]
        if absent:
            raise p.err("model_name", f"unknown SigLIP model {name!r} (known: {sorted(SIGLIP_MODELS)}; "
                                      f"or give {', '.join(absent)} explicitly)")
        sizes = explicit
        attn_pool = p.get("global_pool", "a string", "map") == "map"
    if p.d.get("ignore_head", True) is not True:
        raise p.err("ignore_head", "only true (JanusFlow uses the patch tokens, not the pooled head)")
    mean = p.get("pixel_mean", "a list of 3 numbers or null", None)
    std = p.get("pixel_std", "a list of 3 numbers or null", None)
    if (mean is None) != (std is None):
        raise p.err("pixel_std" if std is None else "pixel_mean", "pixel_mean and pixel_std go together")
    if mean is None and preprocessor is not None:
        # Without pixel_mean/std the official tower does not normalise; the processor does,
        # with preprocessor_config.json's image_mean/std.
        pp = _J(preprocessor, "", "preprocessor_config.json")
        mean = pp.get("image_mean", "a list of 3 numbers or null", None)
        std = pp.get("image_std", "a list of 3 numbers or null", None)
    try:
        return dataclasses.replace(
            base, image_size=p.get("image_size", "a positive int or a square [n, n] list", 336),
            select_layer=p.get("select_layer", "an int", -2), attn_pool=attn_pool,
            pixel_mean=mean if mean is not None else base.pixel_mean,
            pixel_std=std if std is not None else base.pixel_std, **sizes)
    except ConfigError as e:
        raise ConfigError(f"config.json: {p.path}: {e}") from None


def _codec_from_hf(e: _J, d: _J, hidden: int) -> tuple[GenCodecConfig, int]:
    if "ShallowUViTEncoder" not in e.get("cls", "a string"):
        raise e.err("cls", f"{e.d['cls']!r}: expected ShallowUViTEncoder")
    if "ShallowUViTDecoder" not in d.get("cls", "a string"):
        raise d.err("cls", f"{d.d['cls']!r}: expected ShallowUViTDecoder")
    ep, dp = e.sub("params", {}), d.sub("params", {})
    # Defaults are the official constructors'.
    enc_ch = ep.get("block_out_channels", "a non-empty list of positive ints", (768,))
    dec_ch = dp.get("block_out_channels", "a non-empty list of positive ints", (768,))
    c = enc_ch[0]
    if len(set(enc_ch)) != 1:
        raise ep.err("block_out_channels", f"{list(enc_ch)}: in_conv and mid block must share one width")
    for j, k, val in ((dp, "block_out_channels", dec_ch[-1]), (dp, "in_channels", dp.get("in_channels", "a positive int", 768))):
        if val != c:
            raise j.err(k, f"{val} must equal vision_gen_enc_config.params.block_out_channels[0] = {c}")
    for j in (ep, dp):
        j.require("use_mid_block", True, True)
        if j.get("hidden_size", "a positive int", 2048) != hidden:
            raise j.err("hidden_size", f"{j.d.get('hidden_size', 2048)} != language_config.hidden_size {hidden}")
    pairs = {}
    for k, kind, dflt in (("layers_in_middle", "a positive int", 2), ("norm_eps", "a number", 1e-6),
                          ("use_bias", "a bool", True)):
        a, b = ep.get(k, kind, dflt), dp.get(k, kind, dflt)
        if a != b:
            raise dp.err(k, f"{b!r} differs from {ep.where(k)} = {a!r}; one value is shared here")
        pairs[k] = a
    latent = ep.get("input_channels", "a positive int", 3)
    out = dp.get("out_channels", "a positive int", 3)
    if out != latent:
        raise dp.err("out_channels", f"{out} must equal {ep.where('input_channels')} = {latent}")
    try:
        cfg = GenCodecConfig(
            channels=c, kernel_size=ep.get("kernel_size", "a positive int", 7),
            stride=ep.get("stride", "a positive int", 4), padding=ep.get("padding", "an int or null", None),
            num_blocks=pairs["layers_in_middle"], res_ffn_factor=4, norm_eps=pairs["norm_eps"],
            decoder_patch=2, decoder_upsamples=dp.get("upsamples", "a positive int", 2),
            use_bias=pairs["use_bias"])
    except ConfigError as err:
        raise ConfigError(f"config.json: {ep.path}: {err}") from None
    return cfg, latent


def model_config_from_hf(config_json: dict, base: Optional[ModelConfig] = None, *,
                         preprocessor: Optional[dict] = None) -> ModelConfig:
    """Official JanusFlow ``config.json`` (as a dict) -> :class:`ModelConfig`.

    LLM, SigLIP and gen-codec fields come from ``config_json`` (absent fields take the official
    constructors' defaults). Everything else (VAE, REPA, image size, dtypes) comes from ``base``,
    else from the ``janusflow_jax`` block our exporter adds, else from ``ModelConfig()`` with
    ``repa_layer`` clamped to the LLM's depth (the REPA projector is not in the release). The
    VAE's latent channel count follows the gen codec's ``input_channels``.
    """
    if is_janus_pro_config(config_json):
        return janus_pro_config_from_hf(config_json, base, preprocessor=preprocessor)
    root = _J(config_json, "")
    default_base = base is None and EXTRA_KEY not in config_json
    if base is None and EXTRA_KEY in config_json:
        extra = root.sub(EXTRA_KEY)
        base = config_io.from_dict(ModelConfig, extra.d.get("model", {}), f"config.json: {EXTRA_KEY}.model")
    base = base or ModelConfig()
    llm = llm_config_from_hf(root.sub("language_config"))
    siglip = _siglip_from_hf(root.sub("vision_und_enc_config"), base.siglip, preprocessor)
    codec, latent = _codec_from_hf(root.sub("vision_gen_enc_config"), root.sub("vision_gen_dec_config"),
                                   llm.hidden_size)
    vae = base.vae
    if vae.channels != latent:
        if vae.kind != "kl":
            raise ConfigError(f"config.json: vision_gen_enc_config.params.input_channels: {latent} "
                              f"latent channels, but the base config's pixel VAE has {vae.channels}")
        vae = dataclasses.replace(vae, latent_channels=latent)
    # The REPA projector is training-only and absent from the release, so its layer is no
    # property of the checkpoint: with no config of ours, the default (block 6) is clamped to
    # the LLM's depth so a shallow model imports (and trains, at its last block).
    repa_layer = min(base.repa_layer, llm.num_layers) if default_base else base.repa_layer
    return dataclasses.replace(base, llm=llm, siglip=siglip, gen_codec=codec, vae=vae,
                               und_encoder=SIGLIP.name, gen_head=RECTIFIED_FLOW.name, gen_enabled=True,
                               repa_layer=repa_layer)


def check_official_layout(cfg: ModelConfig):
    """The official layout holds one variant: the SigLIP understanding encoder and the flow head."""
    if cfg.und is not SIGLIP or cfg.head is not RECTIFIED_FLOW or not cfg.gen_enabled:
        raise ConfigError(f"ModelConfig.und_encoder={cfg.und_encoder!r}, gen_head={cfg.gen_head!r}, "
                          f"gen_enabled={cfg.gen_enabled}: the official JanusFlow layout needs "
                          f"und_encoder={SIGLIP.name!r}, gen_head={RECTIFIED_FLOW.name!r}, gen_enabled=True")


def janusflow_hf_config(cfg: ModelConfig, torch_dtype: str = "float32") -> dict:
    """The official JanusFlow ``config.json`` for ``cfg``."""
    check_official_layout(cfg)
    l, s, g = cfg.llm, cfg.siglip, cfg.gen_codec
    if g.decoder_patch != 2 or g.res_ffn_factor != 4:
        raise ConfigError("GenCodecConfig.decoder_patch/res_ffn_factor: the official codec fixes "
                          f"them to 2 and 4, got {g.decoder_patch} and {g.res_ffn_factor}")
    lang = {"model_type": "llama", "vocab_size": l.vocab_size, "hidden_size": l.hidden_size,
            "intermediate_size": l.intermediate_size, "num_hidden_layers": l.num_layers,
            "num_attention_heads": l.num_heads, "num_key_value_heads": l.num_kv_heads,
            "head_dim": l.dim_per_head, "hidden_act": "silu", "rms_norm_eps": l.rms_norm_eps,
            "rope_theta": l.rope_theta, "max_position_embeddings": l.max_position_embeddings,
            "tie_word_embeddings": l.tie_word_embeddings, "attention_bias": False,
            "torch_dtype": torch_dtype}
    sizes = {k: getattr(s, k) for k in _SIGLIP_SIZE_KEYS.values()}
    names = [n for n, v in SIGLIP_MODELS.items() if v == sizes and s.attn_pool]
    names.sort(key=lambda n: not n.endswith(f"_{s.image_size}"))
    vparams = {"model_name": names[0] if names else CUSTOM_SIGLIP, "image_size": s.image_size,
               "select_feature": "same", "select_layer": s.select_layer}
    if not names:
        vparams.update({k: getattr(s, ours) for k, ours in _SIGLIP_SIZE_KEYS.items()},
                       global_pool="map" if s.attn_pool else "")
    common = {"hidden_size": l.hidden_size, "layers_in_middle": g.num_blocks, "norm_eps": g.norm_eps,
              "use_bias": g.use_bias, "elementwise_affine": True, "use_mid_block": True}
    return {
        "architectures": ["MultiModalityCausalLM"], "model_type": "multi_modality",
        "torch_dtype": torch_dtype, "language_config": lang,
        "vision_und_enc_config": {"cls": "CLIPVisionTower", "model_type": "vision_und_enc", "params": vparams},
        "vision_gen_enc_config": {"cls": "ShallowUViTEncoder", "model_type": "vision_gen_enc", "params": {
            "input_channels": cfg.vae.channels, "stride": g.stride, "kernel_size": g.kernel_size,
            "padding": g.padding, "block_out_channels": [g.channels], **common}},
        "vision_gen_dec_config": {"cls": "ShallowUViTDecoder", "model_type": "vision_gen_dec", "params": {
            "in_channels": g.channels, "out_channels": cfg.vae.channels, "block_out_channels": [g.channels],
            "upsamples": g.decoder_upsamples, **common}},
        EXTRA_KEY: {"version": 1, "model": config_io.to_dict(cfg)},
    }


# ------------------------------------------------------------------- Janus / Janus-Pro config.json
def is_janus_pro_config(config_json: dict) -> bool:
    """An official Janus / Janus-Pro ``config.json`` (VQ image tokens), told apart from
    JanusFlow's by its ``gen_head_config``."""
    return isinstance(config_json, dict) and "gen_head_config" in config_json


# gen_vision_config.params beyond the official ones (which fix VQ-16's sizes in code): our
# extension for reduced test models, written only when they differ from VQ-16
_VQ_EXTRA = ("z_channels", "base_channels", "channel_mult", "num_res_blocks", "norm_groups")


def _mlp_gelu(j: _J, input_dim: int, n_embed: int):
    if "MlpProjector" not in j.get("cls", "a string"):
        raise j.err("cls", f"{j.d['cls']!r}: expected MlpProjector")
    p = j.sub("params", {})
    p.require("projector_type", "mlp_gelu", "mlp_gelu")
    p.require("depth", 2, 1)
    for k, want in (("input_dim", input_dim), ("n_embed", n_embed)):
        if p.get(k, "a positive int") != want:
            raise p.err(k, f"{p.d[k]} != {want} (the width it connects)")


def janus_pro_config_from_hf(config_json: dict, base: Optional[ModelConfig] = None, *,
                             preprocessor: Optional[dict] = None) -> ModelConfig:
    """Official Janus / Janus-Pro ``config.json`` -> :class:`ModelConfig` (family janus_pro)."""
    root = _J(config_json, "")
    if base is None and EXTRA_KEY in config_json:
        base = config_io.from_dict(ModelConfig, root.sub(EXTRA_KEY).d.get("model", {}),
                                   f"config.json: {EXTRA_KEY}.model")
    base = base or ModelConfig(gen_head=AUTOREGRESSIVE.name, repa=False)
    llm = llm_config_from_hf(root.sub("language_config"))
    siglip = _siglip_from_hf(root.sub("vision_config"), base.siglip, preprocessor)
    g = root.sub("gen_vision_config")
    if g.get("cls", "a string") != "VQ-16":
        raise g.err("cls", f"{g.d['cls']!r}: only VQ-16 is supported")
    gp = g.sub("params", {})
    vq_fields = {"codebook_size": gp.get("image_token_size", "a positive int", 16384),
                 "embed_dim": gp.get("n_embed", "a positive int", 8)}
    for k in _VQ_EXTRA:
        if k in gp.d:
            vq_fields[k] = gp.get(k, "a non-empty list of positive ints" if k == "channel_mult"
                                  else "a positive int")
    h = root.sub("gen_head_config")
    if h.get("cls", "a string") != "vision_head":
        raise h.err("cls", f"{h.d['cls']!r}: expected vision_head")
    hp = h.sub("params")
    if hp.get("n_embed", "a positive int") != llm.hidden_size:
        raise hp.err("n_embed", f"{hp.d['n_embed']} != language_config.hidden_size {llm.hidden_size}")
    if hp.get("image_token_size", "a positive int") != vq_fields["codebook_size"]:
        raise hp.err("image_token_size", f"{hp.d['image_token_size']} != gen_vision_config.params."
                                         f"image_token_size {vq_fields['codebook_size']}")
    _mlp_gelu(root.sub("aligner_config"), siglip.width, llm.hidden_size)
    _mlp_gelu(root.sub("gen_aligner_config"), vq_fields["embed_dim"], llm.hidden_size)
    try:
        vq = dataclasses.replace(base.vq, **vq_fields)
        hidden = hp.get("image_token_embed", "a positive int")
        return dataclasses.replace(base, gen_head=AUTOREGRESSIVE.name, llm=llm, siglip=siglip, vq=vq,
                                   gen_head_hidden=0 if hidden == llm.hidden_size else hidden,
                                   und_encoder="siglip", gen_enabled=True, repa=False,
                                   image_size=siglip.image_size,
                                   repa_layer=min(base.repa_layer, llm.num_layers))
    except ConfigError as e:
        raise ConfigError(f"config.json: {e}") from None


def janus_pro_hf_config(cfg: ModelConfig, torch_dtype: str = "float32") -> dict:
    """The official Janus-Pro ``config.json`` for ``cfg`` (JanusFlow's language/vision parts)."""
    flow = janusflow_hf_config(dataclasses.replace(cfg, gen_head=RECTIFIED_FLOW.name, repa=False,
                                                   gen_codec=GenCodecConfig()), torch_dtype)
    d, v = cfg.llm.hidden_size, cfg.vq
    gparams = {"image_token_size": v.codebook_size, "n_embed": v.embed_dim}
    default = dataclasses.replace(VQConfig(), codebook_size=v.codebook_size, embed_dim=v.embed_dim)
    gparams.update({k: (list(getattr(v, k)) if k == "channel_mult" else getattr(v, k))
                    for k in _VQ_EXTRA if getattr(v, k) != getattr(default, k)})

    def mlp(kind, din):
        return {"cls": "MlpProjector", "model_type": kind, "params": {
            "depth": 2, "input_dim": din, "n_embed": d, "projector_type": "mlp_gelu"}}
    return {
        "architectures": ["MultiModalityCausalLM"], "model_type": "multi_modality",
        "torch_dtype": torch_dtype, "language_config": flow["language_config"],
        "vision_config": {**flow["vision_und_enc_config"], "model_type": "vision"},
        "aligner_config": mlp("aligner", cfg.siglip.width),
        "gen_vision_config": {"cls": "VQ-16", "model_type": "gen_vision", "params": gparams},
        "gen_aligner_config": mlp("gen_aligner", v.embed_dim),
        "gen_head_config": {"cls": "vision_head", "model_type": "gen_head", "params": {
            "image_token_embed": cfg.gen_head_hidden or d, "image_token_size": v.codebook_size,
            "n_embed": d}},
        EXTRA_KEY: {"version": 1, "model": config_io.to_dict(cfg)},
    }


def llm_mismatches(theirs: LLMConfig, ours: LLMConfig) -> list[str]:
    """Each field where two LLM configs disagree, named as config.json and as our config name it."""
    bad = []
    for f in dataclasses.fields(LLMConfig):
        a, b = getattr(theirs, f.name), getattr(ours, f.name)
        if f.name == "head_dim":
            a, b = theirs.dim_per_head, ours.dim_per_head
        if a != b:
            bad.append(f"{_LLM_HF_NAMES.get(f.name, f.name)}={a!r} but cfg.llm.{f.name}={b!r}")
    return bad


def read_config_json(path: str) -> dict:
    """A JSON config file; invalid JSON is one ConfigError naming the file."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: invalid JSON ({e})") from None


def read_model_config(path: str, base: Optional[ModelConfig] = None) -> ModelConfig:
    """:func:`model_config_from_hf` on a directory's ``config.json`` (and, for the pixel
    normalisation, ``preprocessor_config.json`` when present)."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such directory")
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{path}: no config.json (not a Hugging Face model directory)")
    pre_path = os.path.join(path, "preprocessor_config.json")
    pre = read_config_json(pre_path) if os.path.isfile(pre_path) else None
    return model_config_from_hf(read_config_json(cfg_path), base, preprocessor=pre)


def vae_config_from_diffusers(d: dict) -> VAEConfig:
    """diffusers ``AutoencoderKL`` config.json -> :class:`VAEConfig` (defaults: diffusers')."""
    j = _J(d, "")
    if d.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise j.err("_class_name", f"{d['_class_name']!r}: only AutoencoderKL is supported")
    ch = j.get("block_out_channels", "a non-empty list of positive ints", (64,))
    j.require("act_fn", "silu", "silu")
    for k, want in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        v = d.get(k, [want] * len(ch))
        if not isinstance(v, list) or v != [want] * len(ch):
            raise j.err(k, f"{v!r}: expected {len(ch)} x {want!r}")
    for k in ("latents_mean", "latents_std"):
        if d.get(k) is not None:
            raise j.err(k, "per-channel latent statistics are not supported")
    cin = j.get("in_channels", "a positive int", 3)
    if j.get("out_channels", "a positive int", 3) != cin:
        raise j.err("out_channels", f"must equal in_channels = {cin}")
    shift = d.get("shift_factor")
    try:
        return VAEConfig(
            kind="kl", in_channels=cin, latent_channels=j.get("latent_channels", "a positive int", 4),
            block_out_channels=ch, layers_per_block=j.get("layers_per_block", "a positive int", 1),
            norm_num_groups=j.get("norm_num_groups", "a positive int", 32),
            scaling_factor=j.get("scaling_factor", "a number", 0.18215),
            shift_factor=0.0 if shift is None else j.get("shift_factor", "a number"),
            use_quant_conv=j.get("use_quant_conv", "a bool", True),
            use_post_quant_conv=j.get("use_post_quant_conv", "a bool", True),
            mid_block_add_attention=j.get("mid_block_add_attention", "a bool", True))
    except ConfigError as e:
        raise ConfigError(f"config.json: {e}") from None


# The official config.json of each checkpoint layout (a generation head's ``layout``)
HF_CONFIGS = {RECTIFIED_FLOW.layout: janusflow_hf_config, AUTOREGRESSIVE.layout: janus_pro_hf_config}


def hf_config_from_model_config(cfg: ModelConfig, torch_dtype: str = "float32") -> dict:
    """The official ``config.json`` structure for ``cfg`` in its generation head's layout
    (inverse of :func:`model_config_from_hf`)."""
    return HF_CONFIGS[cfg.head.layout](cfg, torch_dtype)
