"""JanusFlow <-> Hugging Face / PyTorch checkpoints (official ``deepseek-ai/JanusFlow-1.3B`` layout).

Import: :func:`load_janusflow_hf` reads ``config.json`` (everything the release leaves
UNCONFIRMED comes from there, see :func:`model_config_from_hf`), builds the model abstractly
(``nnx.eval_shape``: no random init) and streams the tensors into it one at a time, so host
memory stays near the size of the model itself. Before any tensor is read, the checkpoint's
key set and shapes (from the file headers) are checked against :func:`janusflow_key_map`;
every missing, unexpected or mis-shaped key is reported by name in one
:class:`CheckpointMismatch`. Nothing is dropped or invented silently; the one documented
exception is the REPA projector, which exists only for training and is not in the release.

Export: :func:`export_janusflow_hf` writes ``config.json`` in the official structure and
``model.safetensors`` (sharded above ``max_shard_bytes``) with the official key names and torch
shapes, in the parameters' own dtype, so import -> export reproduces every tensor bit for bit.

Component importers for training from scratch: :func:`load_llama_into` (a HF LLaMA directory),
:func:`load_siglip_into` (JanusFlow, bare timm or transformers ``SiglipVisionModel`` layout)
and :func:`load_vae` (a diffusers ``AutoencoderKL`` directory).

Safety: weights are read with ``safetensors`` or, for ``*.bin``, ``torch.load(weights_only=True)``
only; nothing in a checkpoint directory is ever imported or executed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Callable, Iterable, Iterator, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from numpy.lib.stride_tricks import as_strided

from janusflow import paths
from janusflow.configs import io as config_io
from janusflow.checkpoint import key_maps
from janusflow.checkpoint.janus_pro_keys import CODEBOOK_USED, CODEBOOK_USED_SIZE, janus_pro_key_map
from janusflow.checkpoint.precheck import all_finite, check_config_against_headers, weight_files_name
from janusflow.checkpoint.torch_layout import (CheckpointMismatch, flat_params, flush,
                                               load_state_dict, to_ours, to_torch)
from janusflow.configs.schema import (ConfigError, GenCodecConfig, LLMConfig, ModelConfig, SiglipConfig,
                                      VAEConfig, VQConfig)
from janusflow.records import RecordError, read_json_object
from janusflow.models.build import abstract_model, build_vae

__all__ = ["CheckpointMismatch", "TensorSource", "iter_tensors", "is_hf_dir", "stream_load",
           "model_config_from_hf", "read_model_config", "hf_config_from_model_config",
           "llm_config_from_hf", "vae_config_from_diffusers", "janusflow_key_map", "abstract_model",
           "init_training_only", "load_janusflow_hf", "export_janusflow_hf", "load_llama_into",
           "load_siglip_into", "load_vae", "TRAINING_ONLY"]

MODEL_FILES = (("model.safetensors", "model.safetensors.index.json"),
               ("pytorch_model.bin", "pytorch_model.bin.index.json"))
DIFFUSERS_FILES = (("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json"),
                   ("diffusion_pytorch_model.bin", "diffusion_pytorch_model.bin.index.json"))
# Parameters of our model that the official checkpoint does not have (training-only heads).
TRAINING_ONLY = (("repa_projector",),)
DEFAULT_SHARD_BYTES = 2 * 2 ** 30
EXTRA_KEY = "janusflow_jax"      # our full ModelConfig, for the fields config.json does not settle

_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
             "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_FLOAT = ("F64", "F32", "F16", "BF16")
Progress = Optional[Callable[[int, int, int, int], None]]


# ------------------------------------------------------------------------------ tensor files
@dataclasses.dataclass(frozen=True)
class TensorInfo:
    shape: tuple
    dtype: str                     # safetensors dtype name: F32, BF16, ...
    file: str

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _ITEMSIZE.get(self.dtype, 4)


def _dtype_name(a) -> str:
    s = str(a.dtype).replace("torch.", "")
    return {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
            "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
            "bool": "BOOL"}.get(s, s)


def _to_numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):                   # torch tensor; numpy has no bf16, ml_dtypes does
        a = a.detach().cpu()
        if str(a.dtype) == "torch.bfloat16":
            import ml_dtypes
            import torch
            return a.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return a.numpy()
    return np.asarray(a)


def _torch_load(path: str) -> dict:
    try:
        import torch
    except ImportError:
        raise ImportError(f"{path} is a PyTorch pickle; reading it needs torch (pip install torch, "
                          "the CPU build is enough) -- or convert it to safetensors") from None
    try:
        try:          # mmap: tensors stay on disk until read (zipfile format, torch >= 1.6)
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e) and "zip" not in str(e):
                raise
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:       # weights_only refuses anything but tensors and containers
        raise CheckpointMismatch(f"{path}: cannot be read as a plain state dict with "
                                 f"torch.load(weights_only=True): {e}") from None
    if not isinstance(sd, Mapping) or not all(isinstance(k, str) and hasattr(v, "shape")
                                              for k, v in sd.items()):
        raise CheckpointMismatch(f"{path}: not a flat state dict of tensors")
    return dict(sd)


def _inside(root: str, name: str) -> str:
    try:   # a plain name, not resolved: the HF cache's shards are symlinks to its blobs/ folder
        return os.path.join(root, paths.plain_name(name))
    except paths.OutsideRoot:
        raise CheckpointMismatch(f"shard index names {name!r}: shards must be plain file names "
                                 f"inside {root}") from None


def safe_open_checked(f: str):
    """``safe_open`` of a safetensors file; an unreadable header is one
    :class:`CheckpointMismatch` naming the file (SafetensorError is not a ValueError)."""
    from safetensors import safe_open
    try:
        return safe_open(f, framework="numpy")
    except Exception as e:
        raise CheckpointMismatch(f"{f}: not a readable safetensors file ({e})") from None


class TensorSource:
    """The tensors of one checkpoint directory: ``index`` (key -> :class:`TensorInfo`) from the
    file headers, and :meth:`iter` yielding ``(key, numpy array)`` one tensor at a time.
    ``*.safetensors`` (single or sharded) is preferred; ``*.bin`` needs torch."""

    def __init__(self, path: str, files=MODEL_FILES):
        if not os.path.isdir(path):
            raise FileNotFoundError(f"checkpoint directory {path!r} does not exist")
        self.path, self.kind, self.files, self._weight_map = path, None, [], None
        for kind, (single, index) in zip(("safetensors", "bin"), files):
            if os.path.isfile(os.path.join(path, single)):
                self.kind, self.files = kind, [os.path.join(path, single)]
            elif os.path.isfile(os.path.join(path, index)):
                self.kind, self.files = kind, self._from_index(os.path.join(path, index))
            if self.kind:
                break
        if not self.kind:
            names = ", ".join(n for pair in files for n in pair)
            raise FileNotFoundError(f"{path}: no weights found (looked for {names})")
        self.index: dict[str, TensorInfo] = {}
        for f in self.files:
            for k, shape, dt in self._scan(f):
                if k in self.index:
                    raise CheckpointMismatch(f"{k} appears in both {self.index[k].file} and {f}")
                self.index[k] = TensorInfo(shape, dt, f)
        if self._weight_map is not None:
            wrong = sorted(k for k, i in self.index.items()
                           if self._weight_map.get(k) != os.path.basename(i.file))
            absent = sorted(set(self._weight_map) - set(self.index))
            if wrong or absent:
                raise CheckpointMismatch(f"{path}: shard index disagrees with the shards: "
                                         f"listed but absent: {absent}; in another shard or "
                                         f"unlisted: {wrong}")

    def _from_index(self, index_path: str) -> list:
        try:
            d = read_json_object(index_path, hint="not a shard index (a JSON object with a 'weight_map')")
        except RecordError as e:
            raise CheckpointMismatch(str(e)) from None
        wm = d.get("weight_map")
        if not isinstance(wm, dict):
            raise CheckpointMismatch(f"{index_path}: weight_map: expected an object "
                                     "{tensor name: shard file}")
        bad = next((k for k, v in wm.items() if not isinstance(v, str)), None)
        if bad is not None:
            raise CheckpointMismatch(f"{index_path}: weight_map.{bad}: expected a shard file name, "
                                     f"got {wm[bad]!r}")
        self._weight_map = wm
        root = os.path.dirname(index_path)
        return [_inside(root, n) for n in dict.fromkeys(wm.values())]

    def _scan(self, f):
        if self.kind == "safetensors":
            # a truncated or malformed file fails here, on its header, before any data is read
            with safe_open_checked(f) as h:
                for k in h.keys():
                    s = h.get_slice(k)
                    yield k, tuple(s.get_shape()), s.get_dtype()
        else:
            for k, v in _torch_load(f).items():
                yield k, tuple(v.shape), _dtype_name(v)

    def iter(self, keys: Optional[Iterable[str]] = None) -> Iterator[tuple[str, np.ndarray]]:
        wanted = set(self.index) if keys is None else set(keys)
        for f in self.files:
            names = [k for k, i in self.index.items() if i.file == f and k in wanted]
            if not names:
                continue
            if self.kind == "safetensors":
                from safetensors import safe_open
                with safe_open_checked(f) as h:
                    for k in names:
                        try:
                            a = h.get_tensor(k)
                        except (TypeError, ValueError):
                            # safetensors releases whose numpy backend predates ml_dtypes bf16
                            with safe_open(f, framework="flax") as hj:
                                a = np.asarray(hj.get_tensor(k))
                        except Exception as e:      # SafetensorError: data unreadable
                            raise CheckpointMismatch(f"{f}: tensor {k}: cannot be read ({e})") from None
                        yield k, a
            else:
                sd = _torch_load(f)
                for k in names:
                    yield k, _to_numpy(sd.pop(k))
                del sd


class _DictSource:
    """A state dict already in memory (numpy arrays or torch tensors) behind the same API."""

    def __init__(self, sd: Mapping):
        self.path, self._sd = "<state dict>", sd
        self.index = {k: TensorInfo(tuple(v.shape), _dtype_name(v), self.path) for k, v in sd.items()}

    def iter(self, keys=None):
        for k in (self._sd if keys is None else keys):
            yield k, _to_numpy(self._sd[k])


def iter_tensors(path: str, keys=None, files=MODEL_FILES) -> Iterator[tuple[str, np.ndarray]]:
    """Stream ``(key, numpy array)`` from a checkpoint directory, one tensor at a time."""
    return TensorSource(path, files).iter(keys)


def is_hf_dir(path: str, files=MODEL_FILES) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) and any(
        os.path.isfile(os.path.join(path, n)) for pair in files for n in pair)


def _probe(shape) -> np.ndarray:
    """A zero-byte stand-in of ``shape``: layout transforms are views, so they run on it
    without touching tensor data (shape checks before reading anything)."""
    return as_strided(np.zeros((), np.uint8), shape=tuple(shape), strides=(0,) * len(shape))


# ------------------------------------------------------------------------ streaming loader
def _under(path: tuple, prefixes) -> bool:
    return any(path[:len(p)] == p for p in prefixes)


def stream_load(module, source, key_map: Mapping, *, dtype=None, ignore=None, rename=None,
                training_only=(), progress: Progress = None) -> None:
    """Check ``source`` against ``key_map`` (keys, shapes, float dtypes) from headers only,
    raise one :class:`CheckpointMismatch` listing every problem, then assign the tensors into
    ``module`` (which may be abstract) as they are read. ``ignore(key)``: keys to skip
    knowingly; ``rename(key, array) -> (key, array)``: legacy-name normalisation; parameters
    under ``training_only`` path prefixes may be absent from ``key_map``."""
    params = flat_params(module)
    rename = rename or (lambda k, a: (k, a))
    seen, unexpected, bad = {}, [], []
    for k, info in source.index.items():
        if ignore is not None and ignore(k):
            continue
        nk, probe = rename(k, _probe(info.shape))
        if nk in seen:
            bad.append(f"{k}: duplicates {seen[nk]} (both map to {nk})")
            continue
        seen[nk] = k
        if nk not in key_map:
            unexpected.append(k)
            continue
        if info.dtype not in _FLOAT:
            bad.append(f"{k}: dtype {info.dtype} is not a float type")
        path, tr = key_map[nk]
        if path in params:
            want = tuple(params[path].get_value().shape)
            if to_ours(nk, tr, probe).shape != want:
                bad.append(f"{k}: checkpoint shape {info.shape}, model expects "
                           f"{to_torch(tr, _probe(want)).shape}")
    missing = [k for k in key_map if k not in seen]
    targets = {p for p, _ in key_map.values()}
    unknown = [f"{k} -> {'.'.join(map(str, p))}" for k, (p, _) in key_map.items() if p not in params]
    uncovered = [".".join(map(str, p)) for p in params
                 if p not in targets and not _under(p, training_only)]
    problems = []
    for title, items, sep in (("missing keys", missing, ", "), ("unexpected keys", unexpected, ", "),
                              ("shape/dtype mismatches", bad, "; "),
                              ("model parameters with no checkpoint key", uncovered, ", "),
                              ("key map points at unknown parameters", unknown, ", ")):
        if items:
            problems.append(f"{title} ({len(items)}): {sep.join(items)}")
    if problems:
        raise CheckpointMismatch(f"{source.path}:\n" + "\n".join(problems))
    wanted = list(seen.values())
    total = sum(source.index[k].nbytes for k in wanted)
    done = nbytes = 0
    for k, arr in source.iter(wanted):
        if source.index[k].dtype in _FLOAT and not all_finite(arr):
            raise CheckpointMismatch(f"{source.index[k].file}: tensor {k} holds NaN or inf values; "
                                     "refusing to load a corrupt checkpoint")
        nk, arr = rename(k, arr)
        path, tr = key_map[nk]
        var = params[path]
        old = var.get_value()
        new = jnp.asarray(to_ours(nk, tr, arr), dtype=dtype or old.dtype)
        if getattr(old, "sharding", None) is not None:      # keep a placed model's layout
            new = jax.device_put(new, old.sharding)
        var.set_value(new)
        del new, arr
        done, nbytes = done + 1, nbytes + source.index[k].nbytes
        if progress:
            progress(done, len(wanted), nbytes, total)
    flush(params)


def _abstract_leftovers(module, skip=()) -> list:
    return [".".join(map(str, p)) for p, v in flat_params(module).items()
            if isinstance(v.get_value(), jax.ShapeDtypeStruct) and not _under(p, skip)]


# ------------------------------------------------------------------------------- config.json
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
                               und_encoder="siglip", gen_enabled=True, repa_layer=repa_layer)


def _official_check(cfg: ModelConfig):
    if cfg.und_encoder != "siglip" or not cfg.gen_enabled:
        raise ConfigError(f"ModelConfig.und_encoder={cfg.und_encoder!r}, gen_enabled={cfg.gen_enabled}: "
                          "the official JanusFlow layout needs und_encoder='siglip', gen_enabled=True")


def hf_config_from_model_config(cfg: ModelConfig, torch_dtype: str = "float32") -> dict:
    """The official ``config.json`` structure for ``cfg`` (inverse of :func:`model_config_from_hf`)."""
    if cfg.family == "janus_pro":
        return janus_pro_hf_config(cfg, torch_dtype)
    _official_check(cfg)
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
    base = base or ModelConfig(family="janus_pro", repa=False)
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
        return dataclasses.replace(base, family="janus_pro", llm=llm, siglip=siglip, vq=vq,
                                   gen_head_hidden=0 if hidden == llm.hidden_size else hidden,
                                   und_encoder="siglip", gen_enabled=True, repa=False,
                                   image_size=siglip.image_size,
                                   repa_layer=min(base.repa_layer, llm.num_layers))
    except ConfigError as e:
        raise ConfigError(f"config.json: {e}") from None


def janus_pro_hf_config(cfg: ModelConfig, torch_dtype: str = "float32") -> dict:
    """The official Janus-Pro ``config.json`` for ``cfg`` (JanusFlow's language/vision parts)."""
    flow = hf_config_from_model_config(dataclasses.replace(cfg, family="janusflow", repa=False,
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


def janus_pro_extra_tensors(cfg: ModelConfig) -> dict:
    return {CODEBOOK_USED: np.zeros((CODEBOOK_USED_SIZE,), np.float32)}


# ---------------------------------------------------------------------------------- key map
def janusflow_key_map(cfg: ModelConfig) -> dict:
    """Every official checkpoint key -> (our parameter path, transform), whole model."""
    if cfg.family == "janus_pro":
        return janus_pro_key_map(cfg)
    _official_check(cfg)
    m: dict = {}

    def add(sub: Mapping, root: str):
        for k, (p, tr) in sub.items():
            m[k] = ((root,) + tuple(p), tr)

    def linear(tkey: str, root: str):
        m[f"{tkey}.weight"] = ((root, "kernel"), "linear")
        m[f"{tkey}.bias"] = ((root, "bias"), "plain")

    add(key_maps.llm_key_map(cfg.llm, "language_model."), "language_model")
    add(key_maps.siglip_key_map(cfg.siglip, "vision_und_enc_model.vision_tower."), "und_encoder")
    linear("vision_und_enc_aligner", "und_aligner")
    m["beg_of_und_embed"] = (("beg_of_und_embed",), "squeeze:1,-1")
    add(key_maps.gen_encoder_key_map(cfg.gen_codec, "vision_gen_enc_model."), "gen_encoder")
    linear("vision_gen_enc_aligner", "gen_aligner")
    add(key_maps.gen_decoder_key_map(cfg.gen_codec, "vision_gen_dec_model."), "gen_decoder")
    m["vision_gen_dec_aligner_norm.weight"] = (("gen_decoder_norm", "scale"), "plain")
    linear("vision_gen_dec_aligner", "gen_decoder_aligner")
    return m


# ------------------------------------------------------------------------ whole-model I/O
def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: invalid JSON ({e})") from None


def _jnp_dtype(dtype):
    if dtype is None:
        return None
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    return jnp.dtype(dtype)



def init_training_only(model, cfg: ModelConfig, dtype=None, seed: int = 0) -> list[str]:
    """Give the training-only parts of an abstract-loaded model their random initialisation.
    Returns the names of the parameters initialised."""
    if getattr(model, "repa_projector", None) is None:
        return []
    from janusflow.models.janusflow import compute_dtype
    from janusflow.models.repa_projector import RepaProjector
    def make():
        fresh = RepaProjector(cfg.llm.hidden_size, cfg.repa_hidden, cfg.siglip.width,
                              rngs=nnx.Rngs(seed), dtype=compute_dtype(cfg.dtype))
        return {".".join(map(str, p)): v.get_value() for p, v in flat_params(fresh).items()}
    new = jax.jit(make)()            # one compile instead of one per initialiser
    for p, var in flat_params(model.repa_projector).items():
        v = new[".".join(map(str, p))]
        var.set_value(v.astype(dtype) if dtype is not None else v)
    return sorted("repa_projector." + k for k in new)


def read_model_config(path: str, base: Optional[ModelConfig] = None) -> ModelConfig:
    """:func:`model_config_from_hf` on a directory's ``config.json`` (and, for the pixel
    normalisation, ``preprocessor_config.json`` when present)."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such directory")
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{path}: no config.json (not a Hugging Face model directory)")
    pre_path = os.path.join(path, "preprocessor_config.json")
    pre = _read_json(pre_path) if os.path.isfile(pre_path) else None
    return model_config_from_hf(_read_json(cfg_path), base, preprocessor=pre)


def _derived_buffer(key: str) -> bool:
    # RoPE tables that transformers < 4.31 saved in checkpoints: recomputed, not weights.
    return key.endswith("rotary_emb.inv_freq")


def load_janusflow_hf(path: str, dtype: str = "float32", *, base: Optional[ModelConfig] = None,
                      progress: Progress = None, log: Callable[[str], None] | None = None):
    """Official JanusFlow HF directory -> (model, cfg). ``dtype``: parameter dtype."""
    jdt = _jnp_dtype(dtype)
    cfg = dataclasses.replace(read_model_config(path, base), param_dtype=dtype)
    source = TensorSource(path)
    key_map = janusflow_key_map(cfg)
    # Layer counts and sizes from the headers first: building the model costs time in
    # proportion to what config.json claims.
    check_config_against_headers(cfg, key_map, {k: i.shape for k, i in source.index.items()
                                                if not _derived_buffer(k)},
                                 os.path.join(path, "config.json"), weight_files_name(source.files))
    model = abstract_model(cfg)
    ignore = _derived_buffer
    if cfg.family == "janus_pro":
        ignore = lambda k: _derived_buffer(k) or k == CODEBOOK_USED          # noqa: E731
        if CODEBOOK_USED in source.index and log:
            log(f"skipped {CODEBOOK_USED} (a training-time usage counter, not a weight)")
    stream_load(model, source, key_map, dtype=jdt, training_only=TRAINING_ONLY,
                ignore=ignore, progress=progress)
    skipped = [k for k in source.index if _derived_buffer(k)]
    if skipped and log:
        log(f"skipped {len(skipped)} derived RoPE buffers (rotary_emb.inv_freq), recomputed at run time")
    inited = init_training_only(model, cfg, jdt)
    if inited and log:
        log(f"not in checkpoint (training-only), left at initialisation: {', '.join(inited)}")
    left = _abstract_leftovers(model)
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
                        max_shard_bytes: int = DEFAULT_SHARD_BYTES, progress: Progress = None) -> list[str]:
    """Write ``config.json`` + ``model.safetensors`` (or shards with an index) in the official
    layout, tensors in the parameters' own dtype. Returns the weight files written."""
    from safetensors.numpy import save_file
    key_map = janusflow_key_map(cfg)
    params = flat_params(model)
    targets = {p for p, _ in key_map.values()}
    uncovered = [".".join(map(str, p)) for p in params if p not in targets and not _under(p, TRAINING_ONLY)]
    unknown = [k for k, (p, _) in key_map.items() if p not in params]
    abstract = _abstract_leftovers(model)
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
    extra = janus_pro_extra_tensors(cfg) if cfg.family == "janus_pro" else {}
    dtypes = [str(params[p].get_value().dtype) for p, _ in key_map.values()]
    torch_dtype = max(set(dtypes), key=dtypes.count)
    hf_cfg = hf_config_from_model_config(cfg, torch_dtype if torch_dtype in ("float32", "bfloat16") else "float32")
    _prepare_out_dir(out_dir, overwrite, _is_export_file)
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    total, done, nbytes = sum(sizes.values()), 0, 0
    for name, keys in zip(names, shards):
        tensors = {}
        for k in keys:
            p, tr = key_map[k]
            tensors[k] = np.ascontiguousarray(to_torch(tr, np.asarray(params[p].get_value())))
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
                 "weight_map": {**{k: n for n, keys in zip(names, shards) for k in keys},
                                **{k: names[-1] for k in extra}}}
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as fh:
            json.dump(index, fh, indent=2)
    with open(os.path.join(out_dir, "config.json"), "w") as fh:
        json.dump(hf_cfg, fh, indent=2)
    return names


# -------------------------------------------------------------------- component importers
def _source(src, files=MODEL_FILES):
    return _DictSource(src) if isinstance(src, Mapping) else TensorSource(src, files)


def load_llama_into(model, path: str, *, dtype=None, progress: Progress = None) -> None:
    """A HF ``LlamaForCausalLM`` directory into ``model.language_model`` (or an ``LLM``).
    Its ``config.json`` must describe the same LLM as ``cfg.llm``."""
    llm = getattr(model, "language_model", model)
    cfg = llm.cfg
    theirs = llm_config_from_hf(_J(_read_json(os.path.join(path, "config.json")), ""))
    bad = []
    for f in dataclasses.fields(LLMConfig):
        a, b = getattr(theirs, f.name), getattr(cfg, f.name)
        if f.name == "head_dim":
            a, b = theirs.dim_per_head, cfg.dim_per_head
        if a != b:
            bad.append(f"{_LLM_HF_NAMES.get(f.name, f.name)}={a!r} but cfg.llm.{f.name}={b!r}")
    if bad:
        raise ConfigError(f"{path}/config.json does not match the model: " + "; ".join(bad))
    stream_load(llm, TensorSource(path), key_maps.llm_key_map(cfg, ""), dtype=_jnp_dtype(dtype),
                ignore=_derived_buffer, progress=progress)


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
    source = _source(src)
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
        load_state_dict(tower, timm_sd, key_maps.siglip_key_map(cfg), dtype=_jnp_dtype(dtype))
        return chosen

    def ignore(k):
        if not k.startswith(prefix):
            return True
        rest = k[len(prefix):]
        if rest.startswith("blocks."):
            i = rest.split(".")[1]
            return i.isdigit() and cfg.depth <= int(i) < cfg.num_layers
        return rest.startswith("attn_pool.") and not cfg.attn_pool
    stream_load(tower, source, key_maps.siglip_key_map(cfg, prefix), dtype=_jnp_dtype(dtype),
                ignore=ignore, progress=progress)
    return chosen


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


def load_vae(path: str, dtype: str = "float32", *, progress: Progress = None):
    """A diffusers ``AutoencoderKL`` directory -> (vae module, VAEConfig). Old attention key
    names and 1x1-conv attention weights are normalised."""
    jdt = _jnp_dtype(dtype)
    vcfg = vae_config_from_diffusers(_read_json(os.path.join(path, "config.json")))
    compute = jnp.bfloat16 if dtype == "bfloat16" else None
    vae = build_vae(vcfg, dtype=compute, abstract=True)
    stream_load(vae, TensorSource(path, DIFFUSERS_FILES), key_maps.vae_key_map(vcfg), dtype=jdt,
                rename=lambda k, a: next(iter(key_maps.normalize_vae_keys({k: a}).items())),
                progress=progress)
    return vae, vcfg
