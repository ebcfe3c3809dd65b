"""Analytic detector for the shapes world (no learned weights).

1. Every pixel takes the nearest of the 10 palette colours or the background gray, or no label
   when it is farther than ``max_dist`` from all of them.
2. Connected components (8-connectivity: a star's tip pixel may touch only diagonally) of each
   colour, of at least ``min_area`` pixels, are the candidate objects. Each grows by the
   adjacent pixels that are at least half its colour over the background, which recovers the
   renderer's coverage >= 0.5 mask from antialiased or blurred edges. Objects with a side
   under ``min_side`` px are dropped (tiny specks match a "square" template perfectly).
3. Shape from geometry: each component's mask, cropped to its bounding box, is compared (IoU)
   with every shape's rasterised template of that size (the templates come from the renderer,
   drawn in boxes 0-2 px larger and cropped, since e.g. a triangle's apex pixel stays dark).
   The best shape wins; its score maps the IoU linearly from ``iou_floor`` 0.6 (score 0) to
   ``iou_full`` 0.85 (score 1): clean renders score 1, an antialiased 32 px star ~0.5, ragged
   noise blobs 0. GenEval's 0.9 counting threshold thus asks for IoU >= 0.835.

The output is what the GenEval scorer consumes: ``{class: [Det]}`` with boxes
(x0, y0, x1, y1, score) in pixels (x1, y1 exclusive) and full-image boolean masks.
:class:`ShapesColorClassifier` names a detection's colour by majority vote of its pixels'
nearest palette colours.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

from janusflow.shapes.world import BACKGROUND, COLORS, PALETTE, SHAPES, shape_mask
from janusflow.eval.geneval_score import Det

_REF = np.asarray([PALETTE[c] for c in COLORS] + [BACKGROUND], np.float32)  # bg is the last row
_BG = len(COLORS)


def _check_image(image) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {a.shape}")
    if a.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {a.dtype}")
    return a


def label_pixels(image, max_dist: float = 90.0) -> np.ndarray:
    """(H, W) int: colour index into ``COLORS``, ``len(COLORS)`` for background, -1 unlabelled."""
    a = _check_image(image).astype(np.float32)
    d = np.linalg.norm(a[..., None, :] - _REF, axis=-1)
    lab = d.argmin(-1)
    lab[d.min(-1) > max_dist] = -1
    return lab


@functools.lru_cache(maxsize=8192)
def _templates(shape: str, w: int, h: int) -> np.ndarray:
    """Stack (K, h, w) of the shape's renders whose lit pixels span exactly w x h."""
    out = []
    for ey in range(3):
        for ex in range(3):
            m = shape_mask(shape, w + ex, h + ey)
            rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
            if len(rows) and rows[-1] - rows[0] + 1 == h and cols[-1] - cols[0] + 1 == w:
                out.append(m[rows[0]:rows[0] + h, cols[0]:cols[0] + w])
    if not out:
        out.append(shape_mask(shape, w, h))
    t = np.stack(out)
    t.setflags(write=False)
    return t


def classify_mask(crop: np.ndarray, shapes=SHAPES):
    """Best shape for a tight-cropped boolean mask: ``(shape, iou, {shape: iou})``."""
    h, w = crop.shape
    ious = {}
    for s in shapes:
        t = _templates(s, w, h)
        inter = (t & crop).sum((1, 2))
        union = (t | crop).sum((1, 2))
        ious[s] = float((inter / np.maximum(union, 1)).max())
    best = max(ious, key=ious.get)
    return best, ious[best], ious


class ShapesDetector:
    """Detector interface for the GenEval scorer over the shapes world."""

    def __init__(self, max_dist: float = 90.0, min_area_frac: float = 0.005, min_area: int = 6,
                 min_side_frac: float = 0.06, min_side: int = 4, iou_floor: float = 0.6,
                 iou_full: float = 0.85, shapes=SHAPES):
        self.max_dist, self.min_area_frac, self.min_area = max_dist, min_area_frac, min_area
        self.min_side_frac, self.min_side = min_side_frac, min_side
        self.iou_floor, self.iou_full, self.shapes = iou_floor, iou_full, tuple(shapes)

    def score_from_iou(self, iou: float) -> float:
        return float(np.clip((iou - self.iou_floor) / (self.iou_full - self.iou_floor), 0.0, 1.0))

    def components(self, image):
        """Candidate objects: list of dicts {color, box (x0, y0, x1, y1), mask (H, W) bool,
        crop (the mask inside box)}."""
        img = _check_image(image)
        lab = label_pixels(img, self.max_dist)
        H, W = lab.shape
        min_area = max(self.min_area, int(round(self.min_area_frac * H * W)))
        min_side = max(self.min_side, int(round(self.min_side_frac * min(H, W))))
        out = []
        for ci, color in enumerate(COLORS):
            sel = lab == ci
            if sel.sum() < min_area:
                continue
            comp, _ = ndimage.label(sel, structure=np.ones((3, 3), bool))
            for k, sl in enumerate(ndimage.find_objects(comp), start=1):
                seed = np.zeros((H, W), bool)
                seed[sl] = comp[sl] == k
                if seed[sl].sum() < min_area:
                    continue
                mask = self._refine(img, seed, sl)
                rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
                box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
                if min(box[2] - box[0], box[3] - box[1]) < min_side:
                    continue
                out.append({"color": color, "box": box, "mask": mask,
                            "crop": mask[box[1]:box[3], box[0]:box[2]]})
        return out

    def _refine(self, img, seed, sl):
        """Grow ``seed`` by the neighbouring pixels that are at least half the object's colour
        over the background (blended edge pixels of antialiased or blurred shapes), so the mask
        approximates the renderer's coverage >= 0.5 rule."""
        H, W = seed.shape
        y0, y1 = max(sl[0].start - 2, 0), min(sl[0].stop + 2, H)
        x0, x1 = max(sl[1].start - 2, 0), min(sl[1].stop + 2, W)
        p = img[y0:y1, x0:x1].astype(np.float32)
        s = seed[y0:y1, x0:x1]
        c = np.median(p[s], axis=0)
        b = np.asarray(BACKGROUND, np.float32)
        cb = c - b
        den = float(cb @ cb)
        if den < 1e-6:
            return seed
        t = (p - b) @ cb / den
        resid = np.linalg.norm(p - b - t[..., None] * cb, axis=-1)
        cand = s | ((t >= 0.5) & (t <= 1.5) & (resid <= self.max_dist / 2))
        comp, _ = ndimage.label(cand, structure=np.ones((3, 3), bool))
        keep = np.unique(comp[s])
        out = np.zeros_like(seed)
        out[y0:y1, x0:x1] = np.isin(comp, keep[keep > 0])
        return out

    def detect(self, image, path=None) -> dict:
        """``{shape: [Det]}``; every component becomes one detection of its best shape."""
        dets = {}
        for c in self.components(image):
            shape, iou, _ = classify_mask(c["crop"], self.shapes)
            score = self.score_from_iou(iou)
            if score <= 0:
                continue
            box = np.asarray(list(c["box"]) + [score], np.float64)
            dets.setdefault(shape, []).append(Det(box, c["mask"], extra={"iou": iou,
                                                                         "color": c["color"]}))
        return dets

    def detect_objects(self, image, min_score: float = 0.3) -> list:
        """Flat list ``[(shape, colour, (x0, y0, x1, y1), score)]`` sorted by position."""
        out = []
        for shape, ds in self.detect(image).items():
            for d in ds:
                if d.score > min_score:
                    out.append((shape, d.extra["color"], tuple(int(v) for v in d.box[:4]), d.score))
        return sorted(out, key=lambda o: (o[2][1], o[2][0]))


class ShapesColorClassifier:
    """Colour classifier interface: majority palette colour of each detection's pixels
    (mask when present, else its box), background and unlabelled pixels ignored."""

    def __init__(self, max_dist: float = 90.0):
        self.max_dist = max_dist

    def classify(self, image, dets, classname=None) -> list:
        lab = label_pixels(image, self.max_dist)
        out = []
        for d in dets:
            if d.mask is not None:
                vals = lab[np.asarray(d.mask, bool)]
            else:
                x0, y0, x1, y1 = (int(round(v)) for v in d.box[:4])
                vals = lab[max(y0, 0):y1, max(x0, 0):x1].ravel()
            vals = vals[(vals >= 0) & (vals != _BG)]
            out.append(COLORS[int(np.bincount(vals, minlength=len(COLORS)).argmax())]
                       if len(vals) else "none")
        return out
