"""The folder layout the GenEval evaluator reads, and a resumable writer for it.

::

    <outdir>/protocol.json                 how the images were made (refuses mismatched reruns)
    <outdir>/00000/metadata.jsonl          the prompt's JSON object, one line
    <outdir>/00000/samples/0000.png ...    N images per prompt

The official reader looks only at all-digit folder names and files matching ``\\d+\\.png``
(``re.match``, so anchored at the start only); any resolution is accepted. Images are written
through a temporary name the reader ignores and renamed, so an interrupted run never leaves a
truncated PNG that a rerun would mistake for a finished one.

Seeds: image ``k`` of prompt ``i`` uses :func:`image_seed` ``(seed, i, k)``, so outputs do not
depend on batch size, on which prompts were already done, or on the order of generation.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Callable, Optional

import numpy as np

from janusflow.records import REQUIRED, Record, RecordError, iter_jsonl

# The official prompt list (553 prompts, MIT), shipped as package data: the default for
# completeness checks.
OFFICIAL_METADATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "geneval_data",
                                 "evaluation_metadata.jsonl")
PROTOCOL_NAME = "protocol.json"
METADATA_NAME = "metadata.jsonl"
SEED_RULE = "numpy SeedSequence([seed, prompt_index, image_index]).generate_state(1)[0]"


class ProtocolMismatch(RuntimeError):
    pass


def check_prompt(m, where: str) -> dict:
    """``m`` if it is a GenEval prompt object as the scorer reads it: ``tag`` and ``prompt``
    strings, ``include`` (and optional ``exclude``) lists of ``{"class": str, "count": int >= 0,
    "color"?: str, "position"?: [str, int]}``; else a RecordError (a ValueError) naming
    ``where`` and the field."""
    rec = Record(m, where)
    rec.get_str("tag", nonempty=True)
    rec.get_str("prompt", nonempty=True)
    for key in ("include", "exclude"):
        for req in rec.get_objs(key, [] if key == "exclude" else REQUIRED):
            req.get_str("class", nonempty=True)
            req.get_int("count", minimum=0)
            req.get_str("color", None)
            pos = req.data.get("position")
            if pos is not None and not (isinstance(pos, list) and len(pos) == 2 and isinstance(pos[0], str)
                                        and type(pos[1]) is int):
                raise req.error("position", "[relation, object index]", pos)
    return m


def load_prompts(path: Optional[str] = None):
    """``(list of prompt dicts, md5 of the file)``: one JSON object a line (:func:`check_prompt`).
    ``path`` None: the official list shipped with the package. A bad line is a ValueError naming
    file, line and field (nothing is skipped: prompt indices are folder names)."""
    path = path or OFFICIAL_METADATA
    with open(path, "rb") as fh:
        raw = fh.read()
    prompts = []
    for _, rec in iter_jsonl(path):
        if isinstance(rec, RecordError):
            raise rec
        prompts.append(check_prompt(rec.data, rec.where))
    return prompts, hashlib.md5(raw).hexdigest()


def image_seed(seed: int, index: int, k: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(index), int(k)]).generate_state(1)[0])


def prompt_dir(outdir: str, index: int) -> str:
    return os.path.join(outdir, f"{index:05d}")


def image_path(outdir: str, index: int, k: int) -> str:
    return os.path.join(prompt_dir(outdir, index), "samples", f"{k:04d}.png")


def _json_roundtrip(d):
    return json.loads(json.dumps(d))


def init_layout(outdir: str, prompts: list, protocol: dict) -> None:
    """Create ``outdir`` (or accept an earlier run of the same protocol) and write every
    prompt's metadata. Raises :class:`ProtocolMismatch` if ``outdir`` holds another protocol,
    a non-empty folder without a protocol, or different prompt metadata."""
    protocol = _json_roundtrip(protocol)
    ppath = os.path.join(outdir, PROTOCOL_NAME)
    if os.path.exists(ppath):
        with open(ppath) as fh:
            old = json.load(fh)
        if old != protocol:
            keys = sorted(k for k in set(old) | set(protocol) if old.get(k) != protocol.get(k))
            diff = "; ".join(f"{k}: {old.get(k)!r} (on disk) vs {protocol.get(k)!r} (now)" for k in keys)
            raise ProtocolMismatch(f"{outdir} was generated with a different protocol ({diff}); "
                                   f"use a new --outdir")
    elif os.path.isdir(outdir) and os.listdir(outdir):
        raise ProtocolMismatch(f"{outdir} is not empty and has no {PROTOCOL_NAME}; refusing to "
                               f"mix images into it (use a new --outdir)")
    os.makedirs(outdir, exist_ok=True)
    for i, meta in enumerate(prompts):
        d = prompt_dir(outdir, i)
        mpath = os.path.join(d, METADATA_NAME)
        if os.path.exists(mpath):
            with open(mpath) as fh:
                if json.load(fh) != _json_roundtrip(meta):
                    raise ProtocolMismatch(f"{mpath} holds a different prompt than line {i + 1} "
                                           f"of the prompt file")
            continue
        os.makedirs(os.path.join(d, "samples"), exist_ok=True)
        with open(mpath, "w") as fh:
            json.dump(meta, fh)
            fh.write("\n")
    if not os.path.exists(ppath):
        with open(ppath, "w") as fh:
            json.dump(protocol, fh, indent=2, sort_keys=True)


def missing_images(outdir: str, n_prompts: int, n: int) -> list:
    """``[(prompt_index, image_index)]`` not yet on disk, in order."""
    return [(i, k) for i in range(n_prompts) for k in range(n)
            if not os.path.isfile(image_path(outdir, i, k))]


def write_image(outdir: str, index: int, k: int, image) -> str:
    from PIL import Image
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[-1] != 3 or a.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {a.dtype} {a.shape}")
    path = image_path(outdir, index, k)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f"tmp-{k:04d}.png")
    Image.fromarray(a).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def generate_layout(outdir: str, prompts: list, protocol: dict, generate_fn: Callable, *,
                    n: int = 4, seed: int = 0, batch_size: int = 8, progress: bool = True,
                    log: Optional[Callable] = None) -> dict:
    """Fill ``outdir`` with ``n`` images per prompt, skipping images already there.

    ``generate_fn(items) -> uint8 (B, H, W, 3)`` gets a list of dicts ``{index, k, prompt,
    metadata, seed}`` (``seed`` per image, from :func:`image_seed`) and must return one image
    per item, in order. Batches mix prompts; each image is written as soon as its batch ends.
    Returns ``{"generated": int, "skipped": int, "total": int}``.
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
    init_layout(outdir, prompts, protocol)
    todo = missing_images(outdir, len(prompts), n)
    total = len(prompts) * n
    if log:
        log(f"{outdir}: {total - len(todo)} of {total} images present, {len(todo)} to generate")
    bar = None
    if progress and todo:
        from tqdm import tqdm
        bar = tqdm(total=len(todo), desc="geneval images", unit="img")
    done = 0
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        items = [{"index": i, "k": k, "prompt": prompts[i]["prompt"], "metadata": prompts[i],
                  "seed": image_seed(seed, i, k)} for i, k in chunk]
        images = np.asarray(generate_fn(items))
        if images.ndim != 4 or images.shape[0] != len(items) or images.shape[-1] != 3:
            raise ValueError(f"generate_fn returned {images.shape} for {len(items)} items; "
                             f"expected ({len(items)}, H, W, 3)")
        for (i, k), img in zip(chunk, images):
            write_image(outdir, i, k, img)
        done += len(chunk)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return {"generated": done, "skipped": total - len(todo), "total": total}


_PNG = re.compile(r"\d+\.png")


def read_layout(outdir: str) -> list:
    """What the official evaluator would read: ``[(image_path, metadata)]``.

    Same selection rules (all-digit folder names, ``re.match(r"\\d+\\.png")`` file names,
    regular files only), sorted for determinism where the official one follows ``os.listdir``.
    """
    out = []
    for sub in sorted(os.listdir(outdir)):
        folder = os.path.join(outdir, sub)
        if not os.path.isdir(folder) or not sub.isdigit():
            continue
        with open(os.path.join(folder, METADATA_NAME)) as fh:
            meta = json.load(fh)
        samples = os.path.join(folder, "samples")
        for name in sorted(os.listdir(samples)):
            path = os.path.join(samples, name)
            if os.path.isfile(path) and _PNG.match(name):
                out.append((path, meta))
    return out


def load_image(path: str) -> np.ndarray:
    """RGB uint8, EXIF orientation applied as the official evaluator does. An unreadable file
    or one over the pixel cap (checked before decoding) is a ValueError naming it."""
    from PIL import ImageOps

    from janusflow.data.preprocess import BadExample, open_image, read_image_file
    try:
        im = open_image(read_image_file(path))
    except BadExample as e:
        raise ValueError(f"{path}: {e.detail}") from None
    return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
