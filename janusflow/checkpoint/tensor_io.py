"""Reading tensor files, bounded: the tensors of a checkpoint directory (safetensors, single or
sharded with an index, or ``pytorch_model*.bin``) indexed from their headers before any data is
read, then streamed one tensor at a time as numpy arrays.

Safety: ``safetensors`` or, for ``*.bin``, ``torch.load(weights_only=True)`` only; nothing in a
checkpoint directory is imported or executed; shard names in an index must be plain names inside
the directory; an unreadable header or tensor is one :class:`CheckpointMismatch` naming the file.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Iterable, Iterator, Mapping, Optional

import numpy as np
from numpy.lib.stride_tricks import as_strided

from janusflow import paths
from janusflow.checkpoint.torch_layout import CheckpointMismatch
from janusflow.records import RecordError, read_json_object

MODEL_FILES = (("model.safetensors", "model.safetensors.index.json"),
               ("pytorch_model.bin", "pytorch_model.bin.index.json"))
DIFFUSERS_FILES = (("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json"),
                   ("diffusion_pytorch_model.bin", "diffusion_pytorch_model.bin.index.json"))
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
            "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    shape: tuple
    dtype: str                     # safetensors dtype name: F32, BF16, ...
    file: str

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * ITEMSIZE.get(self.dtype, 4)


def dtype_name(a) -> str:
    s = str(a.dtype).replace("torch.", "")
    return {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
            "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
            "bool": "BOOL"}.get(s, s)


def to_numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):                   # torch tensor; numpy has no bf16, ml_dtypes does
        a = a.detach().cpu()
        if str(a.dtype) == "torch.bfloat16":
            import ml_dtypes
            import torch
            return a.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return a.numpy()
    return np.asarray(a)


def torch_load(path: str) -> dict:
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
            for k, v in torch_load(f).items():
                yield k, tuple(v.shape), dtype_name(v)

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
                sd = torch_load(f)
                for k in names:
                    yield k, to_numpy(sd.pop(k))
                del sd


class DictSource:
    """A state dict already in memory (numpy arrays or torch tensors) behind the same API."""

    def __init__(self, sd: Mapping):
        self.path, self._sd = "<state dict>", sd
        self.index = {k: TensorInfo(tuple(v.shape), dtype_name(v), self.path) for k, v in sd.items()}

    def iter(self, keys=None):
        for k in (self._sd if keys is None else keys):
            yield k, to_numpy(self._sd[k])


def iter_tensors(path: str, keys=None, files=MODEL_FILES) -> Iterator[tuple[str, np.ndarray]]:
    """Stream ``(key, numpy array)`` from a checkpoint directory, one tensor at a time."""
    return TensorSource(path, files).iter(keys)


def is_hf_dir(path: str, files=MODEL_FILES) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) and any(
        os.path.isfile(os.path.join(path, n)) for pair in files for n in pair)


def shape_probe(shape) -> np.ndarray:
    """A zero-byte stand-in of ``shape``: layout transforms are views, so they run on it
    without touching tensor data (shape checks before reading anything)."""
    return as_strided(np.zeros((), np.uint8), shape=tuple(shape), strides=(0,) * len(shape))


def tensor_source(src, files=MODEL_FILES):
    """A checkpoint directory's :class:`TensorSource`, or a :class:`DictSource` for a state dict."""
    return DictSource(src) if isinstance(src, Mapping) else TensorSource(src, files)
