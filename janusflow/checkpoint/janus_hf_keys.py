"""transformers' own Janus layout (``transformers.models.janus``: the ``JanusForConditionalGeneration``
state dict, e.g. deepseek-community/Janus-Pro-1B) <-> our :class:`~janusflow.models.janus_pro.JanusPro`,
as ``{key: (nnx_path, transform)}`` like :mod:`janusflow.checkpoint.janus_pro_keys`, whose official
names it renames:

  model.language_model.*, lm_head    LlamaModel + top-level head (absent when tied)  -> language_model
  model.vision_model.*               SigLIP, q/k/v separate, no attention-pool head -> und_encoder
  model.aligner.{fc1,hidden_layers.0}                                               -> und_aligner.fc{1,2}
  model.vqmodel.*                    VQ-16: encoder.down.i.block.j, decoder.up.i.block.j,
                                     mid.{block_1,attn_1,block_2}                   -> gen_vision
  model.generation_embeddings.weight                                                -> gen_embed
  model.generation_aligner.{fc1,hidden_layers.0}                                    -> gen_aligner.fc{1,2}
  model.generation_head.{proj_out,vision_head}                                      -> gen_head

Our SigLIP fuses q|k|v into one tensor (timm's layout); no per-tensor transform splits one, so
the map names a virtual ``self_attn.qkv_proj`` key and :func:`fused_qkv_keys` its three parts:
:class:`FusedSource` reads the parts as that key, :func:`split_fused` writes it back as them.
"""

from __future__ import annotations

import re

import numpy as np

from janusflow.checkpoint import key_maps
from janusflow.checkpoint.janus_pro_keys import vq_key_map
from janusflow.checkpoint.tensor_io import TensorInfo
from janusflow.configs.schema import ModelConfig

VISION = "model.vision_model."

# official VQ-16 names -> transformers' (the same modules; only the container names differ)
_VQ_RENAMES = ((r"encoder\.conv_blocks\.(\d+)\.res\.", r"encoder.down.\1.block."),
               (r"encoder\.conv_blocks\.(\d+)\.", r"encoder.down.\1."),
               (r"decoder\.conv_blocks\.(\d+)\.res\.", r"decoder.up.\1.block."),
               (r"decoder\.conv_blocks\.(\d+)\.", r"decoder.up.\1."),
               (r"\.mid\.0\.", ".mid.block_1."), (r"\.mid\.1\.", ".mid.attn_1."),
               (r"\.mid\.2\.", ".mid.block_2."))

# official timm SigLIP names -> transformers' JanusVisionModel (attn.qkv: the virtual fused key)
_VISION_RENAMES = ((r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
                   (r"^blocks\.(\d+)\.norm(\d)\.", r"encoder.layers.\1.layer_norm\2."),
                   (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv_proj."),
                   (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection_layer."),
                   (r"^blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."),
                   (r"^norm\.", "post_layernorm."))


def _rename(key: str, rules) -> str:
    for pat, rep in rules:
        key = re.sub(pat, rep, key)
    return key


def vision_key_map(cfg: ModelConfig) -> dict:
    """``JanusVisionModel`` keys (without the ``model.vision_model.`` prefix); position
    embeddings are (N, D) there, (1, N, D) in ours. No attention-pool head: transformers' class
    has none (Janus reads the patch tokens), so a tower with one exports without it."""
    m = {}
    for k, (p, tr) in key_maps.siglip_key_map(cfg.siglip).items():
        if k.startswith("attn_pool."):
            continue
        if k == "pos_embed":
            m["embeddings.position_embedding.weight"] = (p, "unsqueeze0")
        else:
            m[_rename(k, _VISION_RENAMES)] = (p, tr)
    return m


def janus_hf_key_map(cfg: ModelConfig) -> dict:
    """Every ``JanusForConditionalGeneration`` key (vision q/k/v as one virtual fused key)
    -> (our path, transform)."""
    m: dict = {}
    for k, (p, tr) in key_maps.llm_key_map(cfg.llm).items():
        name = k if k == "lm_head.weight" else "model.language_model." + k[len("model."):]
        m[name] = (("language_model",) + p, tr)
    for k, (p, tr) in vision_key_map(cfg).items():
        m[VISION + k] = (("und_encoder",) + p, tr)
    for k, (p, tr) in vq_key_map(cfg.vq).items():
        m["model.vqmodel." + _rename(k, _VQ_RENAMES)] = (("gen_vision",) + p, tr)
    for theirs, ours in (("aligner", "und_aligner"), ("generation_aligner", "gen_aligner")):
        key_maps.linear_keys(m, f"model.{theirs}.fc1", (ours, "fc1"))
        key_maps.linear_keys(m, f"model.{theirs}.hidden_layers.0", (ours, "fc2"))
    m["model.generation_embeddings.weight"] = (("gen_embed",), "plain")
    key_maps.linear_keys(m, "model.generation_head.proj_out", ("gen_head", "output_mlp_projector"))
    key_maps.linear_keys(m, "model.generation_head.vision_head", ("gen_head", "vision_head"))
    return m


def fused_qkv_keys(cfg: ModelConfig) -> dict:
    """Virtual fused key -> its (q, k, v) keys in the checkpoint, rows stacked in that order."""
    out = {}
    for i in range(cfg.siglip.depth):
        base = f"{VISION}encoder.layers.{i}.self_attn."
        for s in ("weight", "bias"):
            out[f"{base}qkv_proj.{s}"] = tuple(f"{base}{n}_proj.{s}" for n in "qkv")
    return out


def split_fused(fused: dict, key: str, array) -> list:
    """A tensor as the checkpoint stores it: a fused key as its parts, any other as itself."""
    if key not in fused:
        return [(key, array)]
    return list(zip(fused[key], np.split(np.asarray(array), len(fused[key]), axis=0)))


class FusedSource:
    """A tensor source (``index``, ``iter``) whose complete, consistent part groups read as one
    fused tensor. An incomplete or mis-shaped group stays as its parts, so the key check names
    the fused key missing and the parts unexpected."""

    def __init__(self, source, fused: dict):
        self.source, self.path, self.files = source, source.path, getattr(source, "files", [])
        self.index, self.parts = dict(source.index), {}
        for key, parts in fused.items():
            infos = [self.index.get(p) for p in parts]
            if None in infos or len({(i.shape[1:], i.dtype) for i in infos}) != 1:
                continue
            for p in parts:
                del self.index[p]
            rows = sum(i.shape[0] for i in infos)
            self.index[key] = TensorInfo((rows,) + tuple(infos[0].shape[1:]), infos[0].dtype, infos[0].file)
            self.parts[key] = parts

    def iter(self, keys=None):
        keys = list(self.index) if keys is None else list(keys)
        yield from self.source.iter([k for k in keys if k not in self.parts])
        for k in keys:
            if k in self.parts:
                got = dict(self.source.iter(self.parts[k]))
                yield k, np.concatenate([got[p] for p in self.parts[k]], axis=0)
