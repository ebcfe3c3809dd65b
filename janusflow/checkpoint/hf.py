"""JanusFlow <-> the official Hugging Face checkpoint (``deepseek-ai/JanusFlow-1.3B`` layout):
import and export of the whole model. The parts live beside this module, by concern:

  tensor_io   reading tensor files (safetensors, sharded, torch ``*.bin`` with weights_only), bounded
  streaming   checking a checkpoint against a key map from headers, then streaming it into a model
  hf_config   ``config.json`` <-> :class:`ModelConfig`, every field type-checked
  key_maps    every official/torch/timm/HF key name (:func:`janusflow_key_map`: the whole model)
  components  pretrained parts into a model: LLaMA, SigLIP (three layouts), the diffusers VAE

Import: :func:`load_janusflow_hf` reads ``config.json`` (everything the release leaves
UNCONFIRMED comes from there), checks it against the weight files' headers, builds the model
abstractly (no random init) and streams the tensors into it one at a time, so host memory stays
near the size of the model itself. Every missing, unexpected or mis-shaped key is reported by
name in one :class:`CheckpointMismatch` before any tensor is read. Nothing is dropped or
invented silently; the one documented exception is the REPA projector, which exists only for
training and is not in the release.

transformers' own Janus classes (``model_type "janus"``) are a third layout of the Janus-Pro
model (:data:`TRANSFORMERS_JANUS`: ``janus_hf_keys``, ``janus_hf_config``), recognised by
``config.json`` on import and chosen by ``layout=`` on export.

Export: :func:`export_janusflow_hf` writes ``config.json`` in the official structure and
``model.safetensors`` (sharded above ``max_shard_bytes``) with the official key names and torch
shapes, in the parameters' own dtype, so import -> export reproduces every tensor bit for bit.

The names listed in ``__all__`` are this package's public checkpoint API (the CLI and the tests
use them through this module).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Callable, Optional

import jax
import numpy as np
from flax import nnx

from janusflow.checkpoint.components import load_llama_into, load_siglip_into, load_vae
from janusflow.checkpoint import hf_config
from janusflow.checkpoint.hf_config import (EXTRA_KEY, hf_config_from_model_config, llm_config_from_hf,
                                            model_config_from_hf, read_config_json, vae_config_from_diffusers)
from janusflow.checkpoint.janus_hf_config import is_janus_hf_config, janus_hf_config, read_janus_hf_config
from janusflow.checkpoint.janus_hf_keys import FusedSource, fused_qkv_keys, janus_hf_key_map, split_fused
from janusflow.checkpoint.janus_pro_keys import CODEBOOK_USED, CODEBOOK_USED_SIZE, janus_pro_key_map
from janusflow.checkpoint.key_maps import derived_buffer, janusflow_key_map
from janusflow.checkpoint.precheck import check_config_against_headers, weight_files_name
from janusflow.checkpoint.streaming import Progress, abstract_leftovers, load_dtype, stream_load, under
from janusflow.checkpoint.tensor_io import TensorSource, is_hf_dir, iter_tensors
from janusflow.checkpoint.torch_layout import CheckpointMismatch, flat_params, to_torch
from janusflow.configs.schema import ModelConfig
from janusflow.configs.variants import AUTOREGRESSIVE, RECTIFIED_FLOW
from janusflow.models.build import build_model
from janusflow.models.janusflow import compute_dtype
from janusflow.models.parts import build_part

__all__ = ["CheckpointMismatch", "TensorSource", "iter_tensors", "is_hf_dir", "stream_load",
           "model_config_from_hf", "read_model_config", "hf_config_from_model_config",
           "llm_config_from_hf", "vae_config_from_diffusers", "janusflow_key_map", "model_key_map",
           "init_training_only", "load_janusflow_hf", "export_janusflow_hf", "load_llama_into",
           "load_siglip_into", "load_vae", "TRAINING_ONLY", "EXTRA_KEY", "DEFAULT_SHARD_BYTES",
           "TRANSFORMERS_JANUS", "dir_layout"]

# Parameters of our model that the official checkpoint does not have (training-only heads).
TRAINING_ONLY = (("repa_projector",),)
DEFAULT_SHARD_BYTES = 2 * 2 ** 30


def init_training_only(model, cfg: ModelConfig, dtype=None, seed: int = 0) -> list[str]:
    """Give the training-only parts of an abstract-loaded model their random initialisation.
    Returns the names of the parameters initialised."""
    names = [p for (p,) in TRAINING_ONLY if getattr(model, p, None) is not None]
    if not names:
        return []

    def make():
        return {f"{n}.{'.'.join(map(str, p))}": v.get_value()
                for n in names
                for p, v in flat_params(build_part(n, cfg, nnx.Rngs(seed), compute_dtype(cfg.dtype))).items()}
    new = jax.jit(make)()            # one compile instead of one per initialiser
    for n in names:
        for p, var in flat_params(getattr(model, n)).items():
            v = new[f"{n}.{'.'.join(map(str, p))}"]
            var.set_value(v.astype(dtype) if dtype is not None else v)
    return sorted(new)


@dataclasses.dataclass(frozen=True)
class Layout:
    """A checkpoint layout: its key map, and the tensors it holds that are no parameter of ours
    (``extras()``: name -> (why, the value an export writes so the official class loads it
    strictly)). ``fused(cfg)``: virtual key -> the checkpoint keys whose rows it stacks;
    ``not_saved``: our parameter prefixes it has no tensor for (an export leaves them out,
    saying so); ``config``: its config.json (None: the official one of ``cfg``)."""
    key_map: Callable[[ModelConfig], dict]
    extras: Callable[[], dict]
    fused: Callable[[ModelConfig], dict] = lambda cfg: {}
    not_saved: tuple = ()
    config: Optional[Callable[[ModelConfig, str], dict]] = None


def _janus_pro_extras() -> dict:
    return {CODEBOOK_USED: ("a training-time usage counter, not a weight",
                            np.zeros((CODEBOOK_USED_SIZE,), np.float32))}


TRANSFORMERS_JANUS = "transformers_janus"      # transformers' own Janus classes (model_type "janus")
LAYOUTS = {RECTIFIED_FLOW.layout: Layout(janusflow_key_map, dict),
           AUTOREGRESSIVE.layout: Layout(janus_pro_key_map, _janus_pro_extras),
           # its vision tower has no attention-pool head (Janus never runs it)
           TRANSFORMERS_JANUS: Layout(janus_hf_key_map, dict, fused_qkv_keys,
                                      (("und_encoder", "attn_pool"),), janus_hf_config)}


def dir_layout(path: str) -> Optional[str]:
    """The layout a HF directory's config.json declares when it is not its model's official
    one (transformers' Janus), else None."""
    return TRANSFORMERS_JANUS if is_janus_hf_config(read_config_json(os.path.join(path, "config.json"))) else None


def read_model_config(path: str, base: Optional[ModelConfig] = None) -> ModelConfig:
    """A HF directory's :class:`ModelConfig`, in whichever layout its config.json declares."""
    if os.path.isfile(os.path.join(path, "config.json")) and dir_layout(path) == TRANSFORMERS_JANUS:
        return read_janus_hf_config(path, base)
    return hf_config.read_model_config(path, base)


def model_key_map(cfg: ModelConfig) -> dict:
    """Every official checkpoint key -> (our parameter path, transform), in ``cfg``'s layout."""
    return LAYOUTS[cfg.head.layout].key_map(cfg)


def load_janusflow_hf(path: str, dtype: str = "float32", *, base: Optional[ModelConfig] = None,
                      progress: Progress = None, log: Callable[[str], None] | None = None):
    """HF directory (official JanusFlow / Janus-Pro, or transformers' Janus) -> (model, cfg).
    ``dtype``: parameter dtype."""
    jdt = load_dtype(dtype)
    cfg = dataclasses.replace(read_model_config(path, base), param_dtype=dtype)
    layout = LAYOUTS[dir_layout(path) or cfg.head.layout]
    source = TensorSource(path)
    fused = layout.fused(cfg)
    if fused:
        source = FusedSource(source, fused)
    key_map = layout.key_map(cfg)
    # Layer counts and sizes from the headers first: building the model costs time in
    # proportion to what config.json claims.
    check_config_against_headers(cfg, key_map, {k: i.shape for k, i in source.index.items()
                                                if not derived_buffer(k)},
                                 os.path.join(path, "config.json"), weight_files_name(source.files))
    model = build_model(cfg, abstract=True)
    extras = layout.extras()
    ignore = lambda k: derived_buffer(k) or k in extras          # noqa: E731
    for k, (why, _) in extras.items():
        if k in source.index and log:
            log(f"skipped {k} ({why})")
    stream_load(model, source, key_map, dtype=jdt, training_only=TRAINING_ONLY,
                ignore=ignore, progress=progress)
    skipped = [k for k in source.index if derived_buffer(k)]
    if skipped and log:
        log(f"skipped {len(skipped)} derived RoPE buffers (rotary_emb.inv_freq), recomputed at run time")
    inited = init_training_only(model, cfg, jdt)
    if inited and log:
        log(f"not in checkpoint (training-only), left at initialisation: {', '.join(inited)}")
    left = abstract_leftovers(model)
    if left:
        raise CheckpointMismatch(f"{path}: parameters never assigned: {', '.join(left)}")
    return model, cfg


def _prepare_out_dir(out_dir: str, overwrite: bool, ours) -> None:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"{out_dir} exists and is not a directory")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not overwrite:
            raise FileExistsError(f"{out_dir} is not empty; choose another directory or pass overwrite=True")
        for n in os.listdir(out_dir):          # stale shards of an earlier export must not linger
            if ours(n):
                os.remove(os.path.join(out_dir, n))
    os.makedirs(out_dir, exist_ok=True)


def _is_export_file(n: str) -> bool:
    return n == "config.json" or (n.startswith("model") and (n.endswith(".safetensors")
                                                              or n == "model.safetensors.index.json"))


def export_janusflow_hf(model, cfg: ModelConfig, out_dir: str, *, overwrite: bool = False,
                        max_shard_bytes: int = DEFAULT_SHARD_BYTES, progress: Progress = None,
                        layout: Optional[str] = None, log: Callable[[str], None] | None = None) -> list[str]:
    """Write ``config.json`` + ``model.safetensors`` (or shards with an index) in the official
    layout (``layout=TRANSFORMERS_JANUS``: transformers' Janus classes'), tensors in the
    parameters' own dtype. Returns the weight files written."""
    from safetensors.numpy import save_file
    lay = LAYOUTS[layout or cfg.head.layout]
    key_map, fused = lay.key_map(cfg), lay.fused(cfg)
    params = flat_params(model)
    dtypes = [str(params[p].get_value().dtype) for p, _ in key_map.values() if p in params]
    torch_dtype = max(set(dtypes), key=dtypes.count) if dtypes else "float32"
    torch_dtype = torch_dtype if torch_dtype in ("float32", "bfloat16") else "float32"
    # the config first: it refuses a model the layout cannot hold, in one line
    hf_cfg = lay.config(cfg, torch_dtype) if lay.config else hf_config_from_model_config(cfg, torch_dtype)
    targets = {p for p, _ in key_map.values()}
    dropped = [".".join(map(str, p)) for p in params if p not in targets and under(p, lay.not_saved)]
    if dropped and log:
        log(f"not in this layout, left out: {len(dropped)} tensors under "
            + ", ".join(".".join(map(str, p)) for p in lay.not_saved))
    uncovered = [".".join(map(str, p)) for p in params
                 if p not in targets and not under(p, TRAINING_ONLY + lay.not_saved)]
    unknown = [k for k, (p, _) in key_map.items() if p not in params]
    abstract = abstract_leftovers(model)
    if uncovered or unknown or abstract:
        raise CheckpointMismatch(f"cannot export: parameters without an official key: {uncovered}; "
                                 f"keys without a parameter: {unknown}; abstract parameters: {abstract}")
    sizes = {k: math.prod(params[p].get_value().shape) * params[p].get_value().dtype.itemsize
             for k, (p, _) in key_map.items()}
    shards, cur, cur_bytes = [], [], 0
    for k in key_map:
        if cur and cur_bytes + sizes[k] > max_shard_bytes:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append(k)
        cur_bytes += sizes[k]
    shards.append(cur)
    # tensors of the official layout that are no parameter of ours (Janus-Pro's codebook usage
    # counter), written with the last shard so the official class loads the export strictly
    extra = {k: value for k, (_, value) in lay.extras().items()}
    _prepare_out_dir(out_dir, overwrite, _is_export_file)
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    total, done, nbytes = sum(sizes.values()), 0, 0
    for name, keys in zip(names, shards):
        tensors = {}
        for k in keys:
            p, tr = key_map[k]
            for name_k, a in split_fused(fused, k, to_torch(tr, np.asarray(params[p].get_value()))):
                tensors[name_k] = np.ascontiguousarray(a)
        if name == names[-1]:
            tensors.update(extra)
        save_file(tensors, os.path.join(out_dir, name), metadata={"format": "pt"})
        done += len(keys)
        nbytes += sum(sizes[k] for k in keys)
        del tensors
        if progress:
            progress(done, len(key_map), nbytes, total)
    if len(shards) > 1:
        index = {"metadata": {"total_size": total},
                 "weight_map": {**{part: n for n, keys in zip(names, shards) for k in keys
                                   for part in fused.get(k, (k,))},
                                **{k: names[-1] for k in extra}}}
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as fh:
            json.dump(index, fh, indent=2)
    with open(os.path.join(out_dir, "config.json"), "w") as fh:
        json.dump(hf_cfg, fh, indent=2)
    return names
