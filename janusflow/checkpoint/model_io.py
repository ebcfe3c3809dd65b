"""Model checkpoints: one directory = ``params/`` (orbax) + ``janusflow_config.json``.

:func:`load_model` is what every entry point (sample, chat, eval, train init) calls wherever
"a checkpoint" is expected: it accepts either such a directory or an official JanusFlow Hugging
Face directory (``config.json`` + ``model*.safetensors`` / ``pytorch_model*.bin``).

The params are saved as a nested dict of arrays (``nnx.to_pure_dict`` of the ``nnx.Param``
state), so the files do not depend on NNX internals; the config is written last, so a
directory with a config is a complete checkpoint.

A directory may be local or a ``gs://`` URL (all file access goes through ``etils.epath``;
orbax reads/writes the arrays of either). Official HF directories are read from local disk
only. On a multi-host run every process calls :func:`save_model` with the (sharded) arrays
-- orbax writes each process's shards and coordinates the processes -- and only process 0
writes the config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from janusflow import paths
from janusflow.configs import io as config_io
from janusflow.checkpoint import hf
from janusflow.checkpoint.streaming import abstract_leftovers, load_dtype
from janusflow.checkpoint.torch_layout import CheckpointMismatch, flat_params, flush, refuse_decoding_layout
from janusflow.configs.schema import RECIPE_PHASES, ConfigError, ModelConfig
from janusflow.models.build import build_model

CONFIG_NAME = "janusflow_config.json"
PARAMS_DIR = "params"
FORMAT = "janusflow-model"
VERSION = 1


def _key(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def is_model_dir(path: str) -> bool:
    return (paths.as_path(path) / CONFIG_NAME).is_file()


def barrier(name: str):
    """All processes of a multi-host run meet here; nothing to wait for in a single process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def save_model(ckpt_dir: str, model, cfg: ModelConfig, tokenizer=None) -> str:
    """Write ``model``'s parameters and ``cfg`` to a new directory ``ckpt_dir`` (local or a
    URL; never overwrites), with ``tokenizer``'s files when given (``Tokenizer.files``), so
    sampling and evaluation find the ids the model was trained on. Returns the absolute local
    path or the URL. Multi-host: call it on every process (arrays may be sharded across hosts)."""
    import orbax.checkpoint as ocp
    path = paths.as_path(ckpt_dir)
    if path.exists():
        raise FileExistsError(f"{path} already exists; refusing to overwrite a checkpoint")
    refuse_decoding_layout(model)
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    abstract = [_key(p) for p, v in jax.tree_util.tree_flatten_with_path(pure)[0]
                if isinstance(v, jax.ShapeDtypeStruct)]
    if abstract:
        raise ValueError(f"cannot save abstract (never loaded) parameters: {', '.join(abstract)}")
    # every process has checked for an existing directory before any process creates it
    barrier("janusflow_save_model_checked")
    primary = jax.process_index() == 0
    if primary:
        path.mkdir(parents=True)
    barrier("janusflow_save_model_mkdir")
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(path / PARAMS_DIR, pure)
    ckpt.wait_until_finished()
    ckpt.close()
    if primary:
        for name, body in (tokenizer.files().items() if tokenizer is not None else ()):
            (path / name).write_text(body)     # before the config: a config means complete
        text = json.dumps({"format": FORMAT, "version": VERSION, "model": config_io.to_dict(cfg)}, indent=2)
        if paths.is_local(path):  # write + rename: a config file is never seen half-written
            tmp = path / (CONFIG_NAME + ".tmp")
            tmp.write_text(text)
            tmp.replace(path / CONFIG_NAME)
        else:  # an object upload is atomic already (readers see all or nothing); rename = copy
            (path / CONFIG_NAME).write_text(text)
    # no process returns (and e.g. loads the model) before the config is written
    barrier("janusflow_save_model_done")
    return str(path)


def load_config(path: str) -> ModelConfig:
    """The :class:`ModelConfig` of a checkpoint directory (native or HF), without weights."""
    if is_model_dir(path):
        try:
            d = json.loads((paths.as_path(path) / CONFIG_NAME).read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}/{CONFIG_NAME}: invalid JSON ({e})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ConfigError(f"{path}/{CONFIG_NAME}: not a {FORMAT} config")
        if d.get("version") != VERSION:
            raise ConfigError(f"{path}/{CONFIG_NAME}: version {d.get('version')!r}, this code reads {VERSION}")
        return config_io.from_dict(ModelConfig, d.get("model", {}), f"{CONFIG_NAME}: model")
    if paths.is_local(path) and hf.is_hf_dir(path):
        return hf.read_model_config(path)
    raise FileNotFoundError(_not_a_checkpoint(path))


def _not_a_checkpoint(path: str) -> str:
    return (f"{path}: not a checkpoint (expected {CONFIG_NAME} + {PARAMS_DIR}/ from save_model, or a "
            "Hugging Face directory with config.json + model.safetensors / pytorch_model.bin"
            + ("; Hugging Face directories are read from local disk only)" if not paths.is_local(path) else ")"))


def load_model(path: str, dtype: Optional[str] = None, *, scan_layers: Optional[bool] = None,
               log: Callable[[str], None] | None = None, progress=None):
    """A native checkpoint directory or a JanusFlow HF directory -> (model, cfg).

    ``dtype`` ("float32" | "bfloat16") casts the parameters; None keeps the saved dtypes (HF
    directories then load as float32). ``scan_layers`` builds the model with stacked (True) or
    per-layer (False) blocks whatever layout the checkpoint was saved in (None: as saved).
    """
    model, cfg = _load_as_saved(path, dtype, log=log, progress=progress)
    if scan_layers is None or scan_layers == cfg.scan_layers:
        return model, cfg
    return relayout(model, cfg, scan_layers)


def relayout(model, cfg: ModelConfig, scan_layers: bool):
    """``model`` rebuilt with ``cfg.scan_layers = scan_layers`` and the same weights: a layout
    of the program (one compiled block scanned, or one per layer), not a different model.
    Returns ``(model, cfg)``; ``model``'s arrays are moved, not copied on the host."""
    cfg = dataclasses.replace(cfg, scan_layers=scan_layers)
    out = build_model(cfg, abstract=True)
    src, dst = flat_params(model), flat_params(out)   # both by the unrolled path (layers.3.*)
    if set(src) != set(dst):
        raise CheckpointMismatch(f"relayout: parameters differ: {sorted(set(src) ^ set(dst))[:5]}")
    for k, v in dst.items():
        v.set_value(src[k].get_value())
    flush(dst)
    left = abstract_leftovers(out)
    if left:
        raise CheckpointMismatch(f"relayout: parameters not written: {', '.join(left)}")
    return out, cfg


def _load_as_saved(path: str, dtype: Optional[str], *, log, progress):
    if not paths.as_path(path).is_dir():
        raise FileNotFoundError(f"{path}: no such checkpoint directory")
    if not is_model_dir(path):
        if paths.is_local(path) and hf.is_hf_dir(path):
            return hf.load_janusflow_hf(path, dtype or "float32", log=log, progress=progress)
        raise FileNotFoundError(_not_a_checkpoint(path))
    import orbax.checkpoint as ocp
    jdt = load_dtype(dtype)
    cfg = load_config(path)
    params_path = paths.as_path(path) / PARAMS_DIR
    ckpt = ocp.StandardCheckpointer()
    saved = {_key(p): m for p, m in jax.tree_util.tree_flatten_with_path(
        ckpt.metadata(params_path).item_metadata.tree)[0]}
    if dtype is None:
        kinds = {str(m.dtype) for m in saved.values()}
        if kinds <= {"float32", "bfloat16"} and len(kinds) == 1:
            cfg = dataclasses.replace(cfg, param_dtype=kinds.pop())
    else:
        cfg = dataclasses.replace(cfg, param_dtype=dtype)
    model = build_model(cfg, abstract=True)
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
    # this process's first device (jax.devices()[0] belongs to process 0 on a multi-host run)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def target(p, v):
        return jax.ShapeDtypeStruct(v.shape, jdt or saved[_key(p)].dtype, sharding=device)
    restored = ckpt.restore(params_path, jax.tree_util.tree_map_with_path(target, pure))
    ckpt.close()
    bad = _non_finite(restored)
    if bad:
        raise CheckpointMismatch(f"{params_path}: parameter {bad[0]} holds NaN or inf values"
                                 + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
                                 + "; refusing to load a corrupt checkpoint")
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(model, state)
    left = abstract_leftovers(model)
    if left:
        raise CheckpointMismatch(f"{params_path}: parameters not restored: {', '.join(left)}")
    return model, cfg


def _non_finite(tree) -> list[str]:
    """Names of the float leaves of ``tree`` holding NaN/inf (one fused pass on device)."""
    def ok(x):
        return jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.floating) else jnp.bool_(True)
    flags = jax.jit(lambda t: jax.tree.map(ok, t))(tree)
    return [_key(p) for p, f in jax.tree_util.tree_flatten_with_path(flags)[0] if not bool(f)]


FINAL_MODEL = "model_ema"        # what `janusflow train` leaves in its workdir for sampling


def resolve_checkpoint(path: str, log: Callable[[str], None] | None = None) -> str:
    """``--checkpoint`` as given -> the model directory to load. A model directory is itself;
    a training workdir (``WORKDIR/model_ema``) or a default-recipe workdir (its last phase's
    ``model_ema``) resolves to its final EMA model, said in one ``log`` line."""
    p = paths.as_path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"--checkpoint {path}: no such directory")
    if is_model_dir(path) or (paths.is_local(path) and hf.is_hf_dir(path)):
        return path
    for sub, what in ((FINAL_MODEL, "training workdir"),
                      (paths.join(RECIPE_PHASES[-1], FINAL_MODEL), "recipe workdir")):
        cand = paths.join(path, sub)
        if is_model_dir(cand):
            if log:
                log(f"{path} is a {what}: using its final EMA model {cand}")
            return cand
    if (p / "checkpoints").is_dir() or (p / RECIPE_PHASES[0]).is_dir():
        raise FileNotFoundError(f"--checkpoint {path}: a training workdir without a final model "
                                f"({FINAL_MODEL}/ is written when the run ends)")
    raise FileNotFoundError(_not_a_checkpoint(path))


def fingerprint(path: str) -> str:
    """A cheap identity of a local model directory: sha256 over every file's relative name,
    size and first and last 64 KiB (not a full hash: reads at most 128 KiB a file). Two saves
    of different weights differ here: the tensors and orbax's metadata (which holds the save
    time) are both covered."""
    h = hashlib.sha256()
    if not paths.is_local(path):     # a bucket: its config and orbax's save metadata only
        for name in (CONFIG_NAME, f"{PARAMS_DIR}/_CHECKPOINT_METADATA"):
            f = paths.as_path(path) / name
            h.update(f.read_bytes() if f.exists() else b"-")
        return h.hexdigest()
    root = os.path.abspath(path)
    for d, _, files in sorted(os.walk(root)):
        for n in sorted(files):
            f = os.path.join(d, n)
            size = os.path.getsize(f)
            h.update(f"{os.path.relpath(f, root)}\0{size}\0".encode())
            with open(f, "rb") as fh:
                h.update(fh.read(1 << 16))
                if size > 1 << 17:
                    fh.seek(size - (1 << 16))
                    h.update(fh.read(1 << 16))
                elif size > 1 << 16:
                    h.update(fh.read())
    return h.hexdigest()
