"""``janusflow data build``: users' files -> a TFDS (array_record) dataset the configs can name.

  janusflow data build --images DIR --captions FILE.jsonl --out DATA_DIR [--name NAME]
  janusflow data build --texts FILE.jsonl|FILE.txt --out DATA_DIR --name NAME

Captions file, one JSON object per line::

  {"image": "relative/path.jpg", "caption": "a dog on a sofa"}
  {"image": "b.png", "caption": ["two captions", "are fine"],
   "qa": [{"question": "What animal is it?", "answer": "A dog."}]}

("file_name" is accepted for "image"; "conversations" in the LLaVA form
``[{"from": "human", "value": ...}, {"from": "gpt", "value": ...}, ...]`` or with "role" and
"content" (askers named in ``USER_ROLES``, e.g. Janus-Pro's ``<|User|>``) for "qa";
``<image>`` markers in questions are dropped since the image always comes first.) The result is
``DATA_DIR/NAME/1.0.0`` with features image / caption (list) / qa (question, answer) / file_name,
read with ``SourceConfig(name=NAME, data_dir=DATA_DIR)`` (default keys fit). Images with alpha,
one channel or another mode are converted to RGB. Nothing needs TensorFlow.

Skipped, counted and named in one line each (file, line, field): lines that are not UTF-8 or
not JSON objects, fields of the wrong type (a caption that is a number or an object, "qa"
that is not a list of objects: :mod:`janusflow.records`), image paths leading outside
``--images`` (absolute, ``..``, or a symlink out: :func:`janusflow.paths.confined`, so a
captions file cannot pull other files into a dataset that may be shared), missing or
unreadable images and images over ``--max-pixels`` (checked in the header, before decoding).
Lines without any text are counted. A build that writes nothing refuses with one line and
removes the folders it created.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import io
import json
import os
import re
import shutil
import sys

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from janusflow import paths
from janusflow.data.preprocess import MAX_PIXELS, BadExample, decode_image, open_image, read_image_file
from janusflow.records import Record, RecordError, iter_jsonl, iter_text_lines

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


# LLaVA's, OpenAI's and the Janus families' (JanusFlow "User", Janus-Pro "<|User|>") names of
# the asking side; any other speaker answers the question before it
USER_ROLES = ("human", "user", "User", "<|User|>")


def _turns(rec: Record) -> list:
    """(question, answer) pairs from "qa" or LLaVA "conversations"; RecordError on bad types."""
    if rec.has("qa"):
        return [(t.get_str("question", ""), t.get_str("answer", "")) for t in rec.get_objs("qa")]
    out, q = [], None
    for m in rec.get_objs("conversations", []):
        role = m.get_str("from") if m.has("from") else m.get_str("role", None)
        value = m.get_str("value") if m.has("value") else m.get_str("content", "")
        if role in USER_ROLES:
            q = value.replace("<image>", "").strip()
        elif q is not None:
            out.append((q, value))
            q = None
    return out


def _captions(rec: Record) -> list:
    c = rec.get_str_list("caption") if rec.has("caption") else rec.get_str_list("captions", [])
    return [x.strip() for x in c if x.strip()]


def _image_field(rec: Record) -> tuple[str, str]:
    """(field name, relative image path): "image", else "file_name"."""
    key = "file_name" if rec.has("file_name") and not rec.has("image") else "image"
    return key, rec.get_str(key, nonempty=True)


def _load_image(path: str, short_side: int, max_pixels: int) -> tuple[bytes | None, list, str]:
    """(encoded image, stats keys, why it was skipped): the original bytes when they are
    already a clean RGB JPEG/PNG of the right size, else re-encoded; None when the file is
    missing, unreadable or over the pixel cap (checked before decoding)."""
    try:
        raw = read_image_file(path, max_pixels=max_pixels, short_side=short_side)
    except OSError as e:
        return None, ["skipped_missing_file"], e.strerror or str(e)
    except BadExample as e:
        return None, [f"skipped_{e.reason}"], e.detail
    flags: list = []
    try:
        with Image.open(io.BytesIO(raw)) as head:
            fmt, (w, h) = head.format, head.size
        img = decode_image(open_image(raw, flags, max_pixels=max_pixels, short_side=short_side),
                           flags, max_pixels=max_pixels)
    except BadExample as e:
        return None, [f"skipped_{e.reason}"], e.detail
    except Exception as e:  # PIL raises many types for corrupt files
        return None, ["skipped_bad_image"], f"{type(e).__name__}: {e}"
    s = short_side / min(w, h) if short_side and min(w, h) > short_side else 1.0
    if s < 1:
        img = np.asarray(Image.fromarray(img).resize((round(w * s), round(h * s)), Image.Resampling.BICUBIC))
        flags.append("resized")
    elif not flags and fmt in ("JPEG", "PNG"):
        return raw, flags, ""
    flags = [f for f in flags if f != "reduced"]     # part of "resized"
    buf = io.BytesIO()
    if fmt == "JPEG":
        Image.fromarray(img).save(buf, format="JPEG", quality=95)
    else:
        Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue(), flags, ""


def _is_val(key: str, val_fraction: float) -> bool:
    return int(hashlib.md5(key.encode()).hexdigest(), 16) % 10000 < val_fraction * 10000


class _Notes:
    """One line per skipped record, the first ``limit`` of them; the rest are only counted."""

    def __init__(self, warn, limit: int = 20):
        self.warn, self.limit, self.n = warn, limit, 0

    def __call__(self, msg: str):
        self.n += 1
        if self.n <= self.limit:
            self.warn(msg)

    def close(self):
        if self.n > self.limit:
            self.warn(f"... and {self.n - self.limit} more skipped lines (counted in the stats)")


def _stderr(msg):
    print(msg, file=sys.stderr)


def check_flags(out: str, name: str, *, val_fraction: float = 0.0, short_side: int = 0,
                threads: int = 1, max_pixels: int = MAX_PIXELS):
    """ValueError naming the flag for a value no build can use."""
    check_dataset_name(name)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out!r} is a file, not a directory")
    if not 0.0 <= val_fraction < 1.0:        # also refuses nan
        raise ValueError(f"--val-fraction {val_fraction}: must be in [0, 1)")
    if short_side < 0:
        raise ValueError(f"--short-side {short_side}: must be >= 0 (0 keeps the images' size)")
    if threads < 1:
        raise ValueError(f"--threads {threads}: must be >= 1")
    if max_pixels < 1:
        raise ValueError(f"--max-pixels {max_pixels}: must be >= 1")


def build_image_text(images: str, captions: str, out: str, name: str = "user_images",
                     val_fraction: float = 0.0, short_side: int = 0, threads: int = 4,
                     max_pixels: int = MAX_PIXELS, log=print, warn=_stderr) -> tuple[str, dict]:
    """Build the dataset; returns (dataset directory, stats). Every image path must stay
    inside ``images`` (no absolute path, no ``..`` out, no symlink leading out); a bad line,
    field or image is skipped with one line to ``warn`` naming file, line and field."""
    check_flags(out, name, val_fraction=val_fraction, short_side=short_side, threads=threads,
                max_pixels=max_pixels)
    if not os.path.isdir(images):
        raise FileNotFoundError(f"--images {images!r} is not a directory")
    if not os.path.isfile(captions):
        raise FileNotFoundError(f"--captions {captions!r} does not exist")
    stats, note = collections.Counter(), _Notes(warn)
    rows = []
    for lineno, rec in iter_jsonl(captions):
        if isinstance(rec, RecordError):
            stats["skipped_bad_line"] += 1
            note(f"{rec}; skipped")
            continue
        try:
            key, rel = _image_field(rec)
            caps, turns = _captions(rec), [(q, a) for q, a in _turns(rec) if a.strip()]
        except RecordError as e:
            stats["skipped_bad_field"] += 1
            note(f"{e}; skipped")
            continue
        try:
            path = paths.confined(images, rel)
        except paths.OutsideRoot as e:
            stats["skipped_outside_images"] += 1
            note(f"{rec.where}: field {key!r}: {e}; skipped")
            continue
        if not caps and not turns:
            stats["skipped_no_text"] += 1
            continue
        rows.append((lineno, rel, caps, turns, path, key))
    split_rows = {"train": [r for r in rows if not _is_val(r[1], val_fraction)]}
    if val_fraction > 0:
        split_rows["validation"] = [r for r in rows if _is_val(r[1], val_fraction)]
    empty = [k for k, v in split_rows.items() if not v]
    if empty:
        note.close()
        if rows:
            raise ValueError(f"--val-fraction {val_fraction} leaves split {empty[0]!r} empty "
                             f"({len(rows)} usable lines in {captions})")
        raise ValueError(f"{captions}: no usable line ({json.dumps(dict(sorted(stats.items())))}); "
                         "nothing was written")

    def generate(split):
        def gen():
            with concurrent.futures.ThreadPoolExecutor(threads) as pool:
                loaded = pool.map(lambda r: _load_image(r[4], short_side, max_pixels), split_rows[split])
                for (lineno, rel, caps, turns, _, key), (data, keys, why) in zip(split_rows[split], loaded):
                    stats.update(keys)              # counted here, not in the worker threads
                    if data is None:
                        note(f"{captions}:{lineno}: field {key!r}: {rel!r}: {why}; skipped")
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
    splits = {k: generate(k) for k in split_rows}
    try:
        return write_dataset(name, features, splits, out, f"Images and captions from {images}", stats, log)
    finally:
        note.close()


def build_text(texts: str, out: str, name: str, log=print, warn=_stderr) -> tuple[str, dict]:
    """Plain-text dataset (feature ``text``) from a .txt (one document per line) or a JSONL
    file with a "text" field (a string). Lines that are not UTF-8, not JSON or whose "text"
    is not a string are skipped with one line naming them."""
    check_flags(out, name)
    if not os.path.isfile(texts):
        raise FileNotFoundError(f"--texts {texts!r} does not exist")
    stats, note = collections.Counter(), _Notes(warn)
    jsonl = texts.endswith(".jsonl")

    def gen():
        for lineno, item in (iter_jsonl if jsonl else iter_text_lines)(texts):
            try:
                if isinstance(item, RecordError):
                    raise item
                t = item.get_str("text", "") if jsonl else item
            except RecordError as e:
                stats["skipped_bad_line"] += 1
                note(f"{e}; skipped")
                continue
            if not t.strip():
                stats["skipped_empty"] += 1
                continue
            stats["written_train"] += 1
            yield lineno, {"text": t}

    features = tfds.features.FeaturesDict({"text": tfds.features.Text()})
    try:
        return write_dataset(name, features, {"train": gen}, out, f"Text from {texts}", stats, log)
    finally:
        note.close()


def check_dataset_name(name):
    if not NAME_RE.match(name):
        raise ValueError(f"--name {name!r}: TFDS names are snake_case ([a-z][a-z0-9_]*)")


def write_dataset(name, features, splits, out, description, stats, log):
    builder = _LocalBuilder(name=name, features=features, splits=splits, description=description,
                            data_dir=out)
    if builder.is_prepared():
        raise FileExistsError(f"{builder.data_dir} already holds a prepared dataset; choose another "
                              "--name or --out")
    # What TFDS will create; on failure we remove exactly what did not exist before.
    mine = [d for d in (out, os.path.join(out, "downloads"), os.path.join(out, name)) if not os.path.exists(d)]
    name_dir = os.path.join(out, name)
    before = set(os.listdir(name_dir)) if os.path.isdir(name_dir) else set()
    tfds.disable_progress_bar()
    try:
        builder.download_and_prepare()
        empty = [k for k in splits if not stats.get(f"written_{k}")]
        if empty:
            raise _Empty()
    except BaseException as e:
        _remove_created(mine, name_dir, before)
        if isinstance(e, (_Empty, AssertionError)):
            empty = [k for k in splits if not stats.get(f"written_{k}")]
            if empty:                               # TFDS's "No examples were yielded"
                raise ValueError(f"no example was written to split {empty[0]!r} "
                                 f"({json.dumps(dict(sorted(stats.items())))}); nothing was kept") from None
        raise
    downloads = os.path.join(out, "downloads")
    if downloads in mine:                           # TFDS's empty download folders: not ours to leave
        for d in (os.path.join(downloads, "extracted"), downloads):
            if os.path.isdir(d) and not os.listdir(d):
                os.rmdir(d)
    log(f"wrote {os.fspath(builder.data_dir)}: {json.dumps(dict(sorted(stats.items())))}")
    return os.fspath(builder.data_dir), dict(stats)


class _Empty(Exception):
    pass


def _remove_created(mine, name_dir, before):
    """Remove the folders this build created (``mine``) and new entries in ``name_dir``."""
    if os.path.isdir(name_dir) and name_dir not in mine:
        for entry in set(os.listdir(name_dir)) - before:
            shutil.rmtree(os.path.join(name_dir, entry), ignore_errors=True)
    for d in reversed(mine):                        # innermost first; `out` itself last
        if os.path.isdir(d):
            shutil.rmtree(d, ignore_errors=True)
