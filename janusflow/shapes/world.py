"""The compositional shapes world: flat coloured shapes on a mid-gray background.

A tiny stand-in for GenEval's world that a small model can learn and an analytic detector
(:mod:`janusflow.shapes.detector`) can score without learned weights. The six GenEval
categories are reproduced with shape names as the classes and GenEval's exact prompt phrasing
and metadata layout, so the same scorer and aggregation run on both.

Everything is deterministic given a ``numpy.random.Generator``; only numpy and PIL are used.

Geometry: an :class:`Obj` is drawn inside its integer pixel box ``(x0, y0, x1, y1)`` (x1, y1
exclusive). Coverage is computed by supersampling and a pixel belongs to the shape when at
least half of it is covered, so a shape's lit pixels can stop short of its box (a triangle's
apex pixel is less than half covered); :func:`pixel_box` gives the tight extent, which is what
a detector sees and what scene sampling checks relations against.

Held-out prompts (see :func:`is_heldout`): for the compositional tags (two_object, colors,
position, color_attr) a prompt belongs to the validation split iff
``int(md5(prompt_text).hexdigest(), 16) % HOLDOUT_MOD == 0``; training scenes never use such a
prompt. single_object (6 prompts) and counting (18 prompts) have too few prompts to hold any
out without removing a concept from training, so both splits share them.
"""

from __future__ import annotations

import copy
import functools
import hashlib
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
# Chosen so every pair (background included) is >= ~90 apart in RGB: nearest-colour
# segmentation then survives blur and the per-object jitter of render(rng=...).
PALETTE = {
    "red": (230, 25, 25), "orange": (255, 140, 0), "yellow": (250, 230, 20),
    "green": (20, 160, 40), "blue": (25, 60, 230), "purple": (130, 30, 190),
    "pink": (255, 125, 200), "brown": (120, 65, 20), "black": (15, 15, 15),
    "white": (245, 245, 245),
}
BACKGROUND = (128, 128, 128)
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
ONE_OBJECT_TAGS = ("single_object", "colors")   # the categories whose prompts ask for one object
RELATIONS = ("left of", "right of", "above", "below")
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
HELDOUT_TAGS = ("two_object", "colors", "position", "color_attr")
HOLDOUT_MOD = 5
SPLITS = ("train", "val", "all")

# Object side as a fraction of the image side, per number of objects in the scene.
_SIDE_RANGE = {1: (0.40, 0.65), 2: (0.30, 0.45), 3: (0.28, 0.38), 4: (0.26, 0.34)}


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    box: tuple  # (x0, y0, x1, y1) integer pixels, x1/y1 exclusive

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
        if self.color not in PALETTE:
            raise ValueError(f"unknown colour {self.color!r}; expected one of {COLORS}")
        x0, y0, x1, y1 = self.box
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"empty box {self.box}; expected x1 > x0 and y1 > y0")


# ------------------------------------------------------------------ geometry


def _star_points(inner: float = 0.42):
    ang = -np.pi / 2 + np.arange(10) * np.pi / 5
    rad = np.where(np.arange(10) % 2 == 0, 1.0, inner)
    pts = np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1)
    pts = (pts - pts.min(0)) / (pts.max(0) - pts.min(0))  # stretch to fill the unit box
    return [tuple(p) for p in pts]


_A, _B = 0.32, 0.68
_POLYGONS = {
    "square": [(0, 0), (1, 0), (1, 1), (0, 1)],
    "triangle": [(0.5, 0), (1, 1), (0, 1)],
    "diamond": [(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)],
    "star": _star_points(),
    "cross": [(_A, 0), (_B, 0), (_B, _A), (1, _A), (1, _B), (_B, _B), (_B, 1), (_A, 1),
              (_A, _B), (0, _B), (0, _A), (_A, _A)],
}


@functools.lru_cache(maxsize=4096)
def _coverage(shape: str, w: int, h: int) -> np.ndarray:
    """Fraction of each pixel of a ``w x h`` box covered by ``shape`` (float32 (h, w))."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    if w < 1 or h < 1:
        raise ValueError(f"shape box must be at least 1x1 pixels, got {w}x{h}")
    s = 8 if max(w, h) <= 96 else 4
    W, H = w * s, h * s
    canvas = Image.new("L", (W, H), 0)
    draw = ImageDraw.Draw(canvas)
    if shape == "circle":
        draw.ellipse([0, 0, W - 1, H - 1], fill=255)
    else:
        draw.polygon([(x * (W - 1), y * (H - 1)) for x, y in _POLYGONS[shape]], fill=255)
    a = np.asarray(canvas, np.float32) / 255.0
    cov = a.reshape(h, s, w, s).mean(axis=(1, 3))
    cov.setflags(write=False)
    return cov


def shape_mask(shape: str, w: int, h: int) -> np.ndarray:
    """Boolean (h, w) pixels of ``shape`` drawn in a ``w x h`` box (what :func:`render` lights)."""
    return _coverage(shape, int(w), int(h)) >= 0.5


def pixel_box(obj: Obj) -> tuple:
    """Tight extent (x0, y0, x1, y1) of the pixels :func:`render` lights for ``obj``."""
    x0, y0, x1, y1 = obj.box
    m = shape_mask(obj.shape, x1 - x0, y1 - y0)
    rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
    if len(rows) == 0:
        raise ValueError(f"{obj} is too small to light any pixel")
    return (x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1)


def render(objects, size: int, rng: Optional[np.random.Generator] = None, *,
           antialias: bool = False) -> np.ndarray:
    """Draw ``objects`` on the gray background: uint8 (size, size, 3).

    ``rng`` (optional) perturbs each object's colour by up to +-12 per channel and adds
    gaussian pixel noise (sigma 2), for training-data variety; without it the render is exact.
    ``antialias`` blends edge pixels by coverage instead of thresholding at 0.5.
    """
    size = int(size)
    if size < 8:
        raise ValueError(f"image size must be >= 8 pixels, got {size}")
    img = np.empty((size, size, 3), np.float32)
    img[:] = BACKGROUND
    for obj in objects:
        x0, y0, x1, y1 = (int(v) for v in obj.box)
        if x0 < 0 or y0 < 0 or x1 > size or y1 > size:
            raise ValueError(f"{obj} lies outside the {size}x{size} image")
        col = np.asarray(PALETTE[obj.color], np.float32)
        if rng is not None:
            col = np.clip(col + rng.integers(-12, 13, 3), 0, 255)
        cov = _coverage(obj.shape, x1 - x0, y1 - y0)
        a = cov if antialias else (cov >= 0.5).astype(np.float32)
        region = img[y0:y1, x0:x1]
        region += a[..., None] * (col - region)
    if rng is not None:
        img += rng.normal(0.0, 2.0, img.shape).astype(np.float32)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ relations


def relative_position(box_a, box_b, threshold: float = 0.1) -> set:
    """GenEval's relations of box A to box B (boxes (x0, y0, x1, y1, ...), y down).

    The centre offset shrinks by ``threshold * (dimA + dimB)`` per axis (clamped at 0, sign
    kept); no relation when it vanishes on both axes; otherwise it is normalised by the length
    of the *unshrunk* offset and an axis yields its relation beyond 0.5. Both axes may hold.
    """
    a = np.asarray(box_a, np.float64)[:4]
    b = np.asarray(box_b, np.float64)[:4]
    ca, cb = (a[:2] + a[2:]) / 2, (b[:2] + b[2:]) / 2
    da, db = np.abs(a[2:] - a[:2]), np.abs(b[2:] - b[:2])
    off = ca - cb
    shrunk = np.maximum(np.abs(off) - threshold * (da + db), 0) * np.sign(off)
    # The official evaluator treats |r| < 1e-3 on both axes as "no relation".
    if np.all(np.abs(shrunk) < 1e-3):
        return set()
    dx, dy = shrunk / np.linalg.norm(off)
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


# ------------------------------------------------------------------ prompts (GenEval phrasing)


def with_article(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def plural(word: str) -> str:
    return f"{word}es" if word.endswith("s") else f"{word}s"


def meta_single(shape):
    return {"tag": "single_object", "include": [{"class": shape, "count": 1}],
            "prompt": f"a photo of {with_article(shape)}"}


def meta_two(a, b):
    return {"tag": "two_object", "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
            "prompt": f"a photo of {with_article(a)} and {with_article(b)}"}


def meta_counting(shape, n):
    return {"tag": "counting", "include": [{"class": shape, "count": n}],
            "exclude": [{"class": shape, "count": n + 1}],
            "prompt": f"a photo of {NUMBERS[n]} {plural(shape)}"}


def meta_colors(shape, color):
    return {"tag": "colors", "include": [{"class": shape, "count": 1, "color": color}],
            "prompt": f"a photo of {with_article(color)} {shape}"}


def meta_position(a, rel, b):
    """"a photo of A rel B": the reference B is include[0], A carries ``position [rel, 0]``."""
    return {"tag": "position",
            "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}],
            "prompt": f"a photo of {with_article(a)} {rel} {with_article(b)}"}


def meta_color_attr(a, ca, b, cb):
    return {"tag": "color_attr",
            "include": [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}],
            "prompt": f"a photo of {with_article(ca)} {a} and {with_article(cb)} {b}"}


@functools.lru_cache(maxsize=None)
def _all_prompts(tag: str) -> tuple:
    pairs = [(a, b) for a in SHAPES for b in SHAPES if a != b]
    if tag == "single_object":
        out = [meta_single(s) for s in SHAPES]
    elif tag == "two_object":
        out = [meta_two(a, b) for a, b in pairs]
    elif tag == "counting":
        out = [meta_counting(s, n) for s in SHAPES for n in (2, 3, 4)]
    elif tag == "colors":
        out = [meta_colors(s, c) for s in SHAPES for c in COLORS]
    elif tag == "position":
        out = [meta_position(a, r, b) for a, b in pairs for r in RELATIONS]
    elif tag == "color_attr":
        out = [meta_color_attr(a, ca, b, cb) for a, b in pairs for ca in COLORS for cb in COLORS
               if ca != cb]
    else:
        raise ValueError(f"unknown category {tag!r}; expected one of {TAGS}")
    return tuple(out)


def is_heldout(metadata: dict) -> bool:
    """True when the prompt belongs to the validation split only (rule in the module doc)."""
    if metadata["tag"] not in HELDOUT_TAGS:
        return False
    return int(hashlib.md5(metadata["prompt"].encode()).hexdigest(), 16) % HOLDOUT_MOD == 0


def prompts_for(tag: str, split: str = "all") -> list:
    """Every prompt (metadata dict) of ``tag`` usable in ``split`` ('train', 'val', 'all')."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    out = list(_all_prompts(tag))
    if split == "train" or (split == "val" and tag in HELDOUT_TAGS):
        out = [m for m in out if is_heldout(m) == (split == "val")]
    return [copy.deepcopy(m) for m in out]


def prompt_set(split: str, n_per_tag: int, seed: int = 0) -> list:
    """``n_per_tag`` prompts of each tag (in GenEval's tag order) from ``split``, deterministic.

    Prompts are drawn without replacement from a seeded shuffle; a tag with fewer distinct
    prompts than ``n_per_tag`` (single_object has 6, counting 18) repeats its shuffled list.
    """
    if n_per_tag < 1:
        raise ValueError(f"n_per_tag must be >= 1, got {n_per_tag}")
    out = []
    for ti, tag in enumerate(TAGS):
        pool = prompts_for(tag, split)
        order = np.random.default_rng([seed, ti]).permutation(len(pool))
        out.extend(copy.deepcopy(pool[order[i % len(pool)]]) for i in range(n_per_tag))
    return out


# ------------------------------------------------------------------ scenes


def _gap(size):
    return max(2, size // 16)


def _separated(a, b, gap):
    return (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def _sides(rng, size, n):
    lo, hi = _SIDE_RANGE[min(n, 4)]
    lo_px = max(6, int(round(lo * size)))
    hi_px = max(lo_px, int(round(hi * size)))
    return [int(rng.integers(lo_px, hi_px + 1)) for _ in range(n)]


def _random_box(rng, size, side, margin):
    x0 = int(rng.integers(margin, size - side - margin + 1))
    y0 = int(rng.integers(margin, size - side - margin + 1))
    return (x0, y0, x0 + side, y0 + side)


def _layout(rng, size, specs, relation=None):
    """Boxes for ``specs`` [(shape, colour)], pairwise separated by a gap (on the lit pixels).
    ``relation`` (rel, i, j): object i must stand in exactly relation ``rel`` to object j."""
    margin, gap = max(1, size // 32), _gap(size)
    shrink = 1.0
    for attempt in range(2000):
        if attempt and attempt % 200 == 0:
            shrink *= 0.9  # crowded: retry with smaller objects
        sides = [max(5, int(s * shrink)) for s in _sides(rng, size, len(specs))]
        objs = []
        for (shape, color), side in zip(specs, sides):
            for _ in range(50):
                o = Obj(shape, color, _random_box(rng, size, side, margin))
                pb = pixel_box(o)
                if all(_separated(pb, pixel_box(p), gap) for p in objs):
                    objs.append(o)
                    break
            else:
                break
        if len(objs) < len(specs):
            continue
        if relation is not None:
            rel, i, j = relation
            if relative_position(pixel_box(objs[i]), pixel_box(objs[j])) != {rel}:
                continue
        return objs
    raise RuntimeError(f"could not lay out {specs} in a {size}px image")


def scene_from_metadata(metadata: dict, rng: np.random.Generator, size: int) -> list:
    """Random objects satisfying a GenEval-style prompt over the shapes world (ground truth)."""
    specs, relation = [], None
    for entry in metadata["include"]:
        for _ in range(int(entry["count"])):
            specs.append((entry["class"], entry.get("color") or COLORS[int(rng.integers(len(COLORS)))]))
    for gi, entry in enumerate(metadata["include"]):
        if "position" in entry:
            if any(int(e["count"]) != 1 for e in metadata["include"]):
                raise ValueError("position prompts need count 1 for every include entry")
            rel, target = entry["position"]
            relation = (rel, gi, int(target))
    return _layout(rng, size, specs, relation)


def sample_scene(rng: np.random.Generator, size: int, category: str, split: str = "train"):
    """A random scene of ``category`` (a GenEval tag) whose prompt belongs to ``split``.

    Returns ``(objects, metadata)`` with metadata ``{tag, include, [exclude], prompt}``.
    """
    pool = _all_prompts(category)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    while True:
        meta = pool[int(rng.integers(len(pool)))]
        if split == "all" or category not in HELDOUT_TAGS or is_heldout(meta) == (split == "val"):
            break
    meta = copy.deepcopy(meta)
    return scene_from_metadata(meta, rng, size), meta


# ------------------------------------------------------------------ understanding questions


def questions(objects, rng: np.random.Generator) -> list:
    """Short-answer questions about a scene: ``[(question, answer, qtype)]``.

    qtypes: ``color`` (of a shape present once), ``count`` (digits, "0" for an absent shape),
    ``shape`` (of the only object of a colour), ``position`` (yes/no, asked only when the
    GenEval rule gives the relation or its opposite, so the answer is unambiguous).
    """
    out = []
    shapes = [o.shape for o in objects]
    colors = [o.color for o in objects]
    unique = [o for o in objects if shapes.count(o.shape) == 1]
    if unique:
        o = unique[int(rng.integers(len(unique)))]
        out.append((f"What color is the {o.shape}?", o.color, "color"))
    shape = SHAPES[int(rng.integers(len(SHAPES)))] if rng.random() < 0.2 or not objects \
        else shapes[int(rng.integers(len(shapes)))]
    out.append((f"How many {plural(shape)} are there?", str(shapes.count(shape)), "count"))
    single_col = [o for o in objects if colors.count(o.color) == 1]
    if single_col:
        o = single_col[int(rng.integers(len(single_col)))]
        out.append((f"What shape is the {o.color} object?", o.shape, "shape"))
    if len(unique) >= 2:
        i, j = rng.choice(len(unique), 2, replace=False)
        a, b = unique[int(i)], unique[int(j)]
        rels = sorted(relative_position(pixel_box(a), pixel_box(b)))
        if rels:
            rel = rels[int(rng.integers(len(rels)))]
            truth = bool(rng.random() < 0.5)
            asked = rel if truth else OPPOSITE[rel]
            out.append((f"Is the {a.shape} {asked} the {b.shape}?", "yes" if truth else "no",
                        "position"))
    return out
