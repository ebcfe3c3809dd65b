"""Model checkpoints: one directory = ``params/`` (orbax) + ``janusflow_config.json``.

:func:`load_model` is what every entry point (sample, chat, eval, train init) calls wherever
"a checkpoint" is expected: it accepts either such a directory or an official JanusFlow Hugging
Face directory (``config.json`` + ``model*.safetensors`` / ``pytorch_model*.bin``).

The params are saved as a nested dict of arrays (``nnx.to_pure_dict`` of the ``nnx.Param``
state), so the files do not depend on NNX internals; the config is written last, so a
directory with a config is a complete checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Optional

import jax
from flax import nnx

from janusflow import config_io
from janusflow.checkpoint import hf
from janusflow.checkpoint.torch_layout import CheckpointMismatch
from janusflow.config import ConfigError, ModelConfig

CONFIG_NAME = "janusflow_config.json"
PARAMS_DIR = "params"
FORMAT = "janusflow-model"
VERSION = 1


def _key(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def is_model_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, CONFIG_NAME))


def save_model(ckpt_dir: str, model, cfg: ModelConfig) -> str:
    """Write ``model``'s parameters and ``cfg`` to a new directory ``ckpt_dir`` (never
    overwrites). Returns the absolute path."""
    import orbax.checkpoint as ocp
    path = os.path.abspath(ckpt_dir)
    if os.path.exists(path):
        raise FileExistsError(f"{path} already exists; refusing to overwrite a checkpoint")
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    abstract = [_key(p) for p, v in jax.tree_util.tree_flatten_with_path(pure)[0]
                if isinstance(v, jax.ShapeDtypeStruct)]
    if abstract:
        raise ValueError(f"cannot save abstract (never loaded) parameters: {', '.join(abstract)}")
    os.makedirs(path)
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(os.path.join(path, PARAMS_DIR), pure)
    ckpt.wait_until_finished()
    ckpt.close()
    tmp = os.path.join(path, CONFIG_NAME + ".tmp")
    with open(tmp, "w") as fh:
        json.dump({"format": FORMAT, "version": VERSION, "model": config_io.to_dict(cfg)}, fh, indent=2)
    os.replace(tmp, os.path.join(path, CONFIG_NAME))
    return path


def load_config(path: str) -> ModelConfig:
    """The :class:`ModelConfig` of a checkpoint directory (native or HF), without weights."""
    if is_model_dir(path):
        with open(os.path.join(path, CONFIG_NAME)) as fh:
            try:
                d = json.load(fh)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}/{CONFIG_NAME}: invalid JSON ({e})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ConfigError(f"{path}/{CONFIG_NAME}: not a {FORMAT} config")
        if d.get("version") != VERSION:
            raise ConfigError(f"{path}/{CONFIG_NAME}: version {d.get('version')!r}, this code reads {VERSION}")
        return config_io.from_dict(ModelConfig, d.get("model", {}), f"{CONFIG_NAME}: model")
    if hf.is_hf_dir(path):
        return hf.read_model_config(path)
    raise FileNotFoundError(_not_a_checkpoint(path))


def _not_a_checkpoint(path: str) -> str:
    return (f"{path}: not a checkpoint (expected {CONFIG_NAME} + {PARAMS_DIR}/ from save_model, or a "
            "Hugging Face directory with config.json + model.safetensors / pytorch_model.bin)")


def load_model(path: str, dtype: Optional[str] = None, *,
               log: Callable[[str], None] | None = None, progress=None):
    """A native checkpoint directory or a JanusFlow HF directory -> (model, cfg).

    ``dtype`` ("float32" | "bfloat16") casts the parameters; None keeps the saved dtypes (HF
    directories then load as float32).
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such checkpoint directory")
    if not is_model_dir(path):
        if hf.is_hf_dir(path):
            return hf.load_janusflow_hf(path, dtype or "float32", log=log, progress=progress)
        raise FileNotFoundError(_not_a_checkpoint(path))
    import orbax.checkpoint as ocp
    jdt = hf._jnp_dtype(dtype)
    cfg = load_config(path)
    params_path = os.path.abspath(os.path.join(path, PARAMS_DIR))
    ckpt = ocp.StandardCheckpointer()
    saved = {_key(p): m for p, m in jax.tree_util.tree_flatten_with_path(
        ckpt.metadata(params_path).item_metadata.tree)[0]}
    if dtype is None:
        kinds = {str(m.dtype) for m in saved.values()}
        if kinds <= {"float32", "bfloat16"} and len(kinds) == 1:
            cfg = dataclasses.replace(cfg, param_dtype=kinds.pop())
    else:
        cfg = dataclasses.replace(cfg, param_dtype=dtype)
    model = hf.abstract_model(cfg)
    state = nnx.state(model, nnx.Param)
    pure = nnx.to_pure_dict(state)
    flat = {_key(p): v for p, v in jax.tree_util.tree_flatten_with_path(pure)[0]}
    missing = sorted(set(flat) - set(saved))
    unexpected = sorted(set(saved) - set(flat))
    bad = [f"{k}: saved {tuple(saved[k].shape)}, model {v.shape}" for k, v in flat.items()
           if k in saved and tuple(saved[k].shape) != tuple(v.shape)]
    if missing or unexpected or bad:
        raise CheckpointMismatch(f"{params_path} does not match {CONFIG_NAME}: missing {missing}; "
                                 f"unexpected {unexpected}; shape mismatches {bad}")
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def target(p, v):
        return jax.ShapeDtypeStruct(v.shape, jdt or saved[_key(p)].dtype, sharding=device)
    restored = ckpt.restore(params_path, jax.tree_util.tree_map_with_path(target, pure))
    ckpt.close()
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(model, state)
    left = hf._abstract_leftovers(model)
    if left:
        raise CheckpointMismatch(f"{params_path}: parameters not restored: {', '.join(left)}")
    return model, cfg
