"""Pretrained parts into a model built from scratch (paper section 4.1: the LLM and SigLIP are
pretrained; the VAE is SDXL's): :func:`load_llama_into` (a HF LLaMA directory),
:func:`load_siglip_into` (JanusFlow, bare timm or transformers ``SiglipVisionModel`` layout) and
:func:`load_vae` (a diffusers ``AutoencoderKL`` directory). Each checks the source's config and
keys before assigning anything."""

from __future__ import annotations

import os

import jax.numpy as jnp

from janusflow.checkpoint import key_maps
from janusflow.checkpoint.hf_config import llm_config_from_hf, llm_mismatches, read_config_json, vae_config_from_diffusers
from janusflow.checkpoint.streaming import Progress, load_dtype, stream_load
from janusflow.checkpoint.tensor_io import DIFFUSERS_FILES, TensorSource, tensor_source
from janusflow.checkpoint.torch_layout import CheckpointMismatch, load_state_dict
from janusflow.configs.schema import ConfigError
from janusflow.models.build import build_vae


def load_llama_into(model, path: str, *, dtype=None, progress: Progress = None) -> None:
    """A HF ``LlamaForCausalLM`` directory into ``model.language_model`` (or an ``LLM``).
    Its ``config.json`` must describe the same LLM as ``cfg.llm``."""
    llm = getattr(model, "language_model", model)
    cfg = llm.cfg
    bad = llm_mismatches(llm_config_from_hf(read_config_json(os.path.join(path, "config.json"))), cfg)
    if bad:
        raise ConfigError(f"{path}/config.json does not match the model: " + "; ".join(bad))
    stream_load(llm, TensorSource(path), key_maps.llm_key_map(cfg, ""), dtype=load_dtype(dtype),
                ignore=key_maps.derived_buffer, progress=progress)


def _find_prefix(keys, suffix: str):
    hits = sorted((k[:-len(suffix)] for k in keys if k.endswith(suffix)), key=len)
    return hits[0] if hits else None


def load_siglip_into(model, src, layout: str = "auto", *, dtype=None, progress: Progress = None) -> str:
    """SigLIP weights into ``model.und_encoder`` (or a ``SiglipVisionTower``). ``src``: a
    directory or an in-memory state dict. ``layout``: "janusflow" (keys under
    ``vision_und_enc_model.vision_tower.``), "timm" (bare timm names, any common prefix), "hf"
    (transformers ``SiglipVisionModel``, with or without ``vision_model.``) or "auto".
    Blocks beyond ``cfg.depth`` are skipped, as the official tower never builds them. Returns
    the layout used."""
    tower = getattr(model, "und_encoder", model)
    if tower is None:
        raise ValueError("this model has no SigLIP encoder (und_encoder/repa disabled)")
    cfg = tower.cfg
    source = tensor_source(src)
    keys = list(source.index)
    jf = "vision_und_enc_model.vision_tower."
    found = {"janusflow": jf if any(k.startswith(jf) for k in keys) else None,
             "timm": _find_prefix(keys, "patch_embed.proj.weight"),
             "hf": _find_prefix(keys, "embeddings.patch_embedding.weight")}
    if layout not in ("auto", *found):
        raise ValueError(f"layout must be auto, janusflow, timm or hf, got {layout!r}")
    order = ("janusflow", "timm", "hf") if layout == "auto" else (layout,)
    chosen = next((lay for lay in order if found[lay] is not None), None)
    if chosen is None:
        raise CheckpointMismatch(f"{source.path}: no SigLIP weights in the {' or '.join(order)} layout "
                                 "(looked for patch_embed.proj.weight / embeddings.patch_embedding.weight)")
    prefix = found[chosen]
    # position_ids: an index buffer older transformers saved, not a weight
    mine = [k for k in keys if k.startswith(prefix) and not k.endswith("embeddings.position_ids")]
    if chosen == "hf":
        # q/k/v are separate in HF and fused in timm: convert the tower in memory (~1.2 GB fp32).
        sd = dict(source.iter(mine))
        timm_sd = key_maps.hf_siglip_to_timm_state_dict(sd, cfg, hf_prefix=prefix)
        del sd
        load_state_dict(tower, timm_sd, key_maps.siglip_key_map(cfg), dtype=load_dtype(dtype))
        return chosen

    def ignore(k):
        if not k.startswith(prefix):
            return True
        rest = k[len(prefix):]
        if rest.startswith("blocks."):
            i = rest.split(".")[1]
            return i.isdigit() and cfg.depth <= int(i) < cfg.num_layers
        return rest.startswith("attn_pool.") and not cfg.attn_pool
    stream_load(tower, source, key_maps.siglip_key_map(cfg, prefix), dtype=load_dtype(dtype),
                ignore=ignore, progress=progress)
    return chosen


def load_vae(path: str, dtype: str = "float32", *, progress: Progress = None):
    """A diffusers ``AutoencoderKL`` directory -> (vae module, VAEConfig). Old attention key
    names and 1x1-conv attention weights are normalised."""
    jdt = load_dtype(dtype)
    vcfg = vae_config_from_diffusers(read_config_json(os.path.join(path, "config.json")))
    compute = jnp.bfloat16 if dtype == "bfloat16" else None
    vae = build_vae(vcfg, dtype=compute, abstract=True)
    stream_load(vae, TensorSource(path, DIFFUSERS_FILES), key_maps.vae_key_map(vcfg), dtype=jdt,
                rename=lambda k, a: next(iter(key_maps.normalize_vae_keys({k: a}).items())),
                progress=progress)
    return vae, vcfg
