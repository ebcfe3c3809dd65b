"""The official Janus / Janus-Pro checkpoint layout (``MultiModalityCausalLM`` of
deepseek-ai/Janus ``janus/models/modeling_vlm.py``) <-> our :class:`~janusflow.models.janus_pro.JanusPro`,
as ``{torch_key: (nnx_path, transform)}`` like :mod:`janusflow.checkpoint.key_maps`.

  language_model.*      HF LlamaForCausalLM                 -> language_model
  vision_model.vision_tower.*  timm SigLIP (CLIPVisionTower)  -> und_encoder
  aligner.layers.{0,2}  MlpProjector mlp_gelu depth 2        -> und_aligner.fc{1,2}
  gen_vision_model.*    VQ-16 (vq_model.VQModel)             -> gen_vision
  gen_embed.weight      nn.Embedding(codebook, embed_dim)    -> gen_embed
  gen_aligner.layers.{0,2}                                    -> gen_aligner.fc{1,2}
  gen_head.{output_mlp_projector,vision_head}                 -> gen_head

``gen_vision_model.quantize.codebook_used`` is a training-time usage counter (a buffer, not a
weight; inference never reads it): it is skipped on import and written as zeros on export so the
official class still loads the export strictly.
"""

from __future__ import annotations

from janusflow.checkpoint import key_maps
from janusflow.configs.schema import ModelConfig, VQConfig

CODEBOOK_USED = "gen_vision_model.quantize.codebook_used"
CODEBOOK_USED_SIZE = 65536        # the official buffer's fixed length


def _conv(m, tkey, path):
    m[f"{tkey}.weight"] = (path + ("kernel",), "conv")
    m[f"{tkey}.bias"] = (path + ("bias",), "plain")


def _resnet(m, tkey, path, cin, cout):
    key_maps.norm_keys(m, f"{tkey}.norm1", path + ("norm1",))
    _conv(m, f"{tkey}.conv1", path + ("conv1",))
    key_maps.norm_keys(m, f"{tkey}.norm2", path + ("norm2",))
    _conv(m, f"{tkey}.conv2", path + ("conv2",))
    if cin != cout:
        _conv(m, f"{tkey}.nin_shortcut", path + ("conv_shortcut",))


def _attn(m, tkey, path):
    # official q/k/v/proj_out are 1x1 convs; ours are the VAE's Linear layers
    key_maps.norm_keys(m, f"{tkey}.norm", path + ("group_norm",))
    for t, ours in (("q", "to_q"), ("k", "to_k"), ("v", "to_v")):
        key_maps.linear_keys(m, f"{tkey}.{t}", path + (ours,), "conv1x1_linear")
    key_maps.linear_keys(m, f"{tkey}.proj_out", path + ("to_out", 0), "conv1x1_linear")


def _mid(m, tkey, path, c):
    _resnet(m, f"{tkey}.0", path + (0,), c, c)
    _attn(m, f"{tkey}.1", path + (1,))
    _resnet(m, f"{tkey}.2", path + (2,), c, c)


def vq_key_map(cfg: VQConfig, prefix: str = "") -> dict:
    """Official ``VQModel`` keys (without the usage-counter buffer)."""
    m: dict = {}
    ch = [cfg.base_channels * k for k in cfg.channel_mult]
    n, last = cfg.num_res_blocks, len(ch) - 1
    E, D = f"{prefix}encoder", f"{prefix}decoder"
    _conv(m, f"{E}.conv_in", ("encoder", "conv_in"))
    cin = cfg.base_channels
    for i, c in enumerate(ch):
        t, p = f"{E}.conv_blocks.{i}", ("encoder", "conv_blocks", i)
        for j in range(n):
            _resnet(m, f"{t}.res.{j}", p + ("res", j), cin if j == 0 else c, c)
            if i == last:
                _attn(m, f"{t}.attn.{j}", p + ("attn", j))
        if i < last:
            _conv(m, f"{t}.downsample.conv", p + ("downsample", "conv"))
        cin = c
    _mid(m, f"{E}.mid", ("encoder", "mid"), ch[-1])
    key_maps.norm_keys(m, f"{E}.norm_out", ("encoder", "norm_out"))
    _conv(m, f"{E}.conv_out", ("encoder", "conv_out"))

    rev = ch[::-1]
    _conv(m, f"{D}.conv_in", ("decoder", "conv_in"))
    _mid(m, f"{D}.mid", ("decoder", "mid"), rev[0])
    cin = rev[0]
    for i, c in enumerate(rev):
        t, p = f"{D}.conv_blocks.{i}", ("decoder", "conv_blocks", i)
        for j in range(n + 1):
            _resnet(m, f"{t}.res.{j}", p + ("res", j), cin if j == 0 else c, c)
            if i == 0:
                _attn(m, f"{t}.attn.{j}", p + ("attn", j))
        if i < last:
            _conv(m, f"{t}.upsample.conv", p + ("upsample", "conv"))
        cin = c
    key_maps.norm_keys(m, f"{D}.norm_out", ("decoder", "norm_out"))
    _conv(m, f"{D}.conv_out", ("decoder", "conv_out"))
    m[f"{prefix}quantize.embedding.weight"] = (("quantize", "embedding"), "plain")
    _conv(m, f"{prefix}quant_conv", ("quant_conv",))
    _conv(m, f"{prefix}post_quant_conv", ("post_quant_conv",))
    return m


def janus_pro_key_map(cfg: ModelConfig) -> dict:
    """Every official Janus-Pro checkpoint key (but the usage counter) -> (our path, transform)."""
    m: dict = {}

    def add(sub, root):
        for k, (p, tr) in sub.items():
            m[k] = ((root,) + tuple(p), tr)

    add(key_maps.llm_key_map(cfg.llm, "language_model."), "language_model")
    add(key_maps.siglip_key_map(cfg.siglip, "vision_model.vision_tower."), "und_encoder")
    for official, ours in (("aligner", "und_aligner"), ("gen_aligner", "gen_aligner")):
        key_maps.linear_keys(m, f"{official}.layers.0", (ours, "fc1"))
        key_maps.linear_keys(m, f"{official}.layers.2", (ours, "fc2"))
    add(vq_key_map(cfg.vq, "gen_vision_model."), "gen_vision")
    m["gen_embed.weight"] = (("gen_embed",), "plain")
    key_maps.linear_keys(m, "gen_head.output_mlp_projector", ("gen_head", "output_mlp_projector"))
    key_maps.linear_keys(m, "gen_head.vision_head", ("gen_head", "vision_head"))
    return m
