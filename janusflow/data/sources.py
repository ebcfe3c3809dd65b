"""TFDS sources for the three task streams, read with grain (random access, no TensorFlow).

A source is named in the config by TFDS dataset name (or a prepared dataset directory), split
and a feature-key mapping (dotted paths into the example, e.g. ``qa.question``). It must be
stored as array_record (``tfds build --file_format=array_record``, ``janusflow data build``, or
the built-in ``janusflow_shapes``): that format gives random access, which is what makes the
shuffle global, the per-process shards exact and the iterator position a single integer.

Per-process sharding: process ``i`` of ``n`` reads the contiguous index range
:func:`shard_bounds` of the split (TFDS already shuffled examples by key hash when writing, so a
contiguous range is a random subset); shards are disjoint and cover the split. Within its
shard a process shuffles globally with a per-epoch reshuffle (grain ``shuffle`` before
``repeat``), so the order is a pure function of (seed, shard, epoch).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from janusflow.configs.data import SourceConfig

ENV_DATA_DIR = "JANUSFLOW_DATA_DIR"


def data_dir_for(cfg: SourceConfig) -> str | None:
    return cfg.data_dir or os.environ.get(ENV_DATA_DIR) or None


def image_decoders(features, path: str):
    """Skip TFDS's own image decoding for ``path`` (we decode with PIL, tolerating bad files)."""
    import tensorflow_datasets as tfds
    feat = features
    parts = path.split(".")
    try:
        for p in parts:
            feat = feat[p]
    except (KeyError, TypeError):
        raise KeyError(f"feature {path!r} not in the dataset; it has {sorted(features.keys())}") from None
    if not isinstance(feat, tfds.features.Image):
        return None
    dec: Any = tfds.decode.SkipDecoding()
    for p in reversed(parts):
        dec = {p: dec}
    return dec


def open_builder(cfg: SourceConfig):
    import tensorflow_datasets as tfds
    from janusflow.shapes import dataset as shapes_tfds
    if os.path.isfile(os.path.join(cfg.name, "dataset_info.json")):
        return tfds.builder_from_directory(cfg.name)
    try:
        builder = tfds.builder(cfg.name, data_dir=data_dir_for(cfg))
    except tfds.core.registered.DatasetNotFoundError:
        builder = None
    if builder is None or not builder.is_prepared():
        if isinstance(builder, shapes_tfds.JanusflowShapes):
            builder.download_and_prepare()           # generated locally, no download
        else:
            raise FileNotFoundError(
                f"dataset {cfg.name!r} is not prepared under data_dir={data_dir_for(cfg)!r}; build it "
                "with `janusflow data build` or `tfds build --file_format=array_record`")
    return builder


def open_source(cfg: SourceConfig, image_key: str | None = None):
    """The split as a random-access sequence of decoded examples (images left encoded)."""
    builder = open_builder(cfg)
    decoders = image_decoders(builder.info.features, image_key) if image_key else None
    try:
        return builder.as_data_source(split=cfg.split, decoders=decoders)
    except NotImplementedError as e:
        raise ValueError(f"dataset {cfg.name!r} is not stored as array_record, which random access "
                         f"needs; rebuild it with --file_format=array_record ({e})") from None


def shard_bounds(n: int, index: int, count: int) -> tuple[int, int]:
    """Contiguous [lo, hi) range of process ``index`` of ``count`` over ``n`` examples."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"process index {index} not in [0, {count})")
    if n < count:
        raise ValueError(f"split of {n} examples cannot give each of {count} processes an example")
    return index * n // count, (index + 1) * n // count


class SafeSource:
    """Wraps a data source so a record that fails to read or parse becomes a skip marker
    instead of an exception in the middle of a run."""

    def __init__(self, source):
        self.source = source

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        try:
            return self.source[index]
        except Exception as e:  # noqa: BLE001 - any storage/parse error skips the record
            return {"_skip": "bad_record", "_detail": f"{type(e).__name__}: {e}"}


def task_dataset(source, *, seed: int, shard_index: int = 0, shard_count: int = 1,
                 shuffle: bool = True, repeat: bool = True):
    """grain ``MapDataset`` of raw records: this process's shard, shuffled, repeated."""
    import grain
    ds = grain.MapDataset.source(SafeSource(source))
    lo, hi = shard_bounds(len(ds), shard_index, shard_count)
    ds = ds[lo:hi]
    if shuffle:
        ds = ds.shuffle(seed=seed % 2**32)
    if repeat:
        ds = ds.repeat(None)
    return ds


# ---------------------------------------------------------------------- record fields
def get_field(record: dict, path: str):
    """Value at a dotted ``path``; raises KeyError naming the path."""
    v = record
    for p in path.split("."):
        if not isinstance(v, dict) or p not in v:
            raise KeyError(f"example has no field {path!r}")
        v = v[p]
    return v


def as_text(v) -> str:
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).decode("utf-8", errors="replace")
    if isinstance(v, np.ndarray) and v.ndim == 0:
        return as_text(v.item())
    if v is None:
        return ""
    return str(v)


def as_text_list(v) -> list[str]:
    """A string feature or a sequence of them -> list of str."""
    if isinstance(v, (bytes, bytearray, str)) or v is None:
        return [as_text(v)]
    if isinstance(v, np.ndarray) and v.ndim == 0:
        return [as_text(v)]
    return [as_text(x) for x in v]
