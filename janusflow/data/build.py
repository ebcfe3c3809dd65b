"""``janusflow data build``: users' files -> a TFDS (array_record) dataset the configs can name.

  janusflow data build --images DIR --captions FILE.jsonl --out DATA_DIR [--name NAME]
  janusflow data build --texts FILE.jsonl|FILE.txt --out DATA_DIR --name NAME

Captions file, one JSON object per line::

  {"image": "relative/path.jpg", "caption": "a dog on a sofa"}
  {"image": "b.png", "caption": ["two captions", "are fine"],
   "qa": [{"question": "What animal is it?", "answer": "A dog."}]}

("file_name" is accepted for "image"; "conversations" in the LLaVA form
``[{"from": "human", "value": ...}, {"from": "gpt", "value": ...}, ...]`` for "qa";
``<image>`` markers in questions are dropped since the image always comes first.) The result is
``DATA_DIR/NAME/1.0.0`` with features image / caption (list) / qa (question, answer) / file_name,
read with ``SourceConfig(name=NAME, data_dir=DATA_DIR)`` (default keys fit). Unreadable images,
lines without an image or any text, and bad JSON are skipped and counted; images with alpha,
one channel or another mode are converted to RGB. Nothing needs TensorFlow.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import io
import json
import os
import re

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from janusflow.data.preprocess import BadExample, decode_image

NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class _LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A builder whose name, features and examples are given at construction."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Built by `janusflow data build`."}

    def __init__(self, *, name, features, splits, description, data_dir):
        self.name = name
        self._features, self._splits, self._description = features, splits, description
        super().__init__(data_dir=data_dir, file_format="array_record")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, description=self._description,
                                     features=self._features)

    def _split_generators(self, dl_manager):
        return {name: self._generate_examples(gen) for name, gen in self._splits.items()}

    def _generate_examples(self, gen):
        yield from gen()


def _turns(rec) -> list:
    if "qa" in rec:
        return [(str(t.get("question", "")), str(t.get("answer", ""))) for t in rec["qa"] or []]
    conv = rec.get("conversations") or []
    out, q = [], None
    for m in conv:
        role, value = m.get("from") or m.get("role"), str(m.get("value") or m.get("content") or "")
        if role in ("human", "user", "User"):
            q = value.replace("<image>", "").strip()
        elif q is not None:
            out.append((q, value))
            q = None
    return out


def _captions(rec) -> list:
    c = rec.get("caption", rec.get("captions", []))
    c = [c] if isinstance(c, str) else list(c or [])
    return [str(x).strip() for x in c if str(x).strip()]


def _load_image(path: str, short_side: int) -> tuple[bytes | None, list]:
    """(encoded image, stats keys): the original bytes when they are already a clean RGB
    JPEG/PNG, else re-encoded; None when the file is missing or unreadable."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError:
        return None, ["skipped_missing_file"]
    flags: list = []
    try:
        img = decode_image(raw, flags)
    except BadExample:
        return None, ["skipped_bad_image"]
    fmt = Image.open(io.BytesIO(raw)).format
    h, w = img.shape[:2]
    if short_side and min(h, w) > short_side:
        s = short_side / min(h, w)
        img = np.asarray(Image.fromarray(img).resize((round(w * s), round(h * s)), Image.Resampling.BICUBIC))
        flags.append("resized")
    elif not flags and fmt in ("JPEG", "PNG"):
        return raw, flags
    buf = io.BytesIO()
    if fmt == "JPEG":
        Image.fromarray(img).save(buf, format="JPEG", quality=95)
    else:
        Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue(), flags


def _is_val(key: str, val_fraction: float) -> bool:
    return int(hashlib.md5(key.encode()).hexdigest(), 16) % 10000 < val_fraction * 10000


def build_image_text(images: str, captions: str, out: str, name: str = "user_images",
                     val_fraction: float = 0.0, short_side: int = 0, threads: int = 4,
                     log=print) -> tuple[str, dict]:
    """Build the dataset; returns (dataset directory, stats)."""
    _check_name(name)
    if not os.path.isdir(images):
        raise FileNotFoundError(f"--images {images!r} is not a directory")
    if not os.path.isfile(captions):
        raise FileNotFoundError(f"--captions {captions!r} does not exist")
    stats = collections.Counter()
    rows = []
    with open(captions, encoding="utf-8") as f:
        for lineno, line in enumerate(f):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                rel = rec.get("image") or rec.get("file_name")
                if not isinstance(rel, str) or not rel:
                    raise ValueError("no image")
            except (ValueError, AttributeError):
                stats["skipped_bad_line"] += 1
                continue
            caps, turns = _captions(rec), [(q, a) for q, a in _turns(rec) if a.strip()]
            if not caps and not turns:
                stats["skipped_no_text"] += 1
                continue
            rows.append((lineno, rel, caps, turns))

    def generate(split):
        def gen():
            mine = [r for r in rows if _is_val(r[1], val_fraction) == (split == "validation")]
            with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
                loaded = pool.map(lambda r: _load_image(os.path.join(images, r[1]), short_side), mine)
                for (lineno, rel, caps, turns), (data, keys) in zip(mine, loaded):
                    stats.update(keys)              # counted here, not in the worker threads
                    if data is None:
                        continue
                    stats[f"written_{split}"] += 1
                    yield lineno, {"image": data, "caption": caps, "file_name": rel,
                                   "qa": {"question": [q for q, _ in turns], "answer": [a for _, a in turns]}}
        return gen

    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),
        "caption": tfds.features.Sequence(tfds.features.Text()),
        "file_name": tfds.features.Text(),
        "qa": tfds.features.Sequence({"question": tfds.features.Text(), "answer": tfds.features.Text()}),
    })
    splits = {"train": generate("train")}
    if val_fraction > 0:
        splits["validation"] = generate("validation")
    return _build(name, features, splits, out, f"Images and captions from {images}", stats, log)


def build_text(texts: str, out: str, name: str, log=print) -> tuple[str, dict]:
    """Plain-text dataset (feature ``text``) from a .txt (one document per line) or a JSONL
    file with a "text" field."""
    _check_name(name)
    if not os.path.isfile(texts):
        raise FileNotFoundError(f"--texts {texts!r} does not exist")
    stats = collections.Counter()

    def gen():
        with open(texts, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f):
                t = line.rstrip("\n")
                if texts.endswith(".jsonl"):
                    try:
                        t = str(json.loads(t).get("text", "")) if t.strip() else ""
                    except (ValueError, AttributeError):
                        stats["skipped_bad_line"] += 1
                        continue
                if not t.strip():
                    stats["skipped_empty"] += 1
                    continue
                stats["written_train"] += 1
                yield lineno, {"text": t}

    features = tfds.features.FeaturesDict({"text": tfds.features.Text()})
    return _build(name, features, {"train": gen}, out, f"Text from {texts}", stats, log)


def _check_name(name):
    if not NAME_RE.match(name):
        raise ValueError(f"--name {name!r}: TFDS names are snake_case ([a-z][a-z0-9_]*)")


def _build(name, features, splits, out, description, stats, log):
    builder = _LocalBuilder(name=name, features=features, splits=splits, description=description,
                            data_dir=out)
    if builder.is_prepared():
        raise FileExistsError(f"{builder.data_dir} already holds a prepared dataset; choose another "
                              "--name or --out")
    tfds.disable_progress_bar()
    builder.download_and_prepare()
    written = sum(v for k, v in stats.items() if k.startswith("written_"))
    if not written:
        raise ValueError(f"no example was written ({dict(stats)})")
    log(f"wrote {os.fspath(builder.data_dir)}: {json.dumps(dict(sorted(stats.items())))}")
    return os.fspath(builder.data_dir), dict(stats)
