"""GenEval-style generation benchmark over the shapes world.

Same six categories, same scoring rules and aggregation as GenEval (:mod:`geneval_score`), on
prompts of the shapes *validation* split (:func:`janusflow.shapes.world.prompt_set`), scored
with the analytic :class:`~janusflow.shapes.detector.ShapesDetector` and the pixel colour
classifier. ``generate_fn`` receives the same items as the GenEval layout writer
(``{index, k, prompt, metadata, seed}``) and returns uint8 (B, H, W, 3), so a model
(:func:`janusflow.eval.geneval.model_generate_fn`) and the ground-truth renderer
(:func:`ground_truth_generate_fn`) plug in alike.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Optional

import numpy as np

from janusflow.shapes import world as shapes
from janusflow.eval.geneval_layout import image_seed
from janusflow.eval.geneval_score import ScoreParams, score_image, summarize
from janusflow.shapes.detector import ShapesColorClassifier, ShapesDetector, classify_mask

# Tags whose prompts ask for exactly one object: where the attribute diagnostic applies.
ONE_OBJECT_TAGS = shapes.ONE_OBJECT_TAGS


def ground_truth_generate_fn(size: int = 32, *, antialias: bool = False, noise: bool = False) -> Callable:
    """Renders a random scene satisfying each item's prompt, seeded by the item's seed."""
    def fn(items):
        out = []
        for it in items:
            rng = np.random.default_rng(it["seed"])
            objs = shapes.scene_from_metadata(it["metadata"], rng, size)
            out.append(shapes.render(objs, size, rng if noise else None, antialias=antialias))
        return np.stack(out)
    return fn


def noise_generate_fn(size: int = 32) -> Callable:
    """Uniform noise images: the floor of the benchmark."""
    def fn(items):
        return np.stack([np.random.default_rng(it["seed"]).integers(0, 256, (size, size, 3), np.uint8)
                         for it in items])
    return fn


def _grid(images, ncols: int, pad: int = 2) -> np.ndarray:
    n = len(images)
    h, w = images[0].shape[:2]
    rows = -(-n // ncols)
    g = np.full((rows * (h + pad) + pad, ncols * (w + pad) + pad, 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, ncols)
        g[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = im
    return g


def run_shapes_bench(generate_fn: Callable, n_per_tag: int = 16, n_images: int = 2, seed: int = 0,
                     outdir: Optional[str] = None, *, split: str = "val", batch_size: int = 32,
                     detector=None, color_classifier=None, params: ScoreParams = ScoreParams(),
                     grid_prompts: int = 8, progress: bool = False, sample_seed: Optional[int] = None) -> dict:
    """Score ``generate_fn`` on ``n_per_tag`` prompts per tag x ``n_images`` images each.
    ``seed`` picks the prompts and, unless ``sample_seed`` is given, the images' noise seeds
    (``sample_seed``: other noise on the same prompts, e.g. per training seed of a sweep).

    Returns ``{"per_tag", "overall", "counts", "n_prompts", "n_images", "correct_images",
    "one_object"}`` (overall = unweighted mean of the 6 tag accuracies, as GenEval;
    ``one_object`` = :func:`one_object_attributes`). With ``outdir``: writes
    ``grid_<tag>.png`` (one row per prompt, up to ``grid_prompts`` rows), ``results.jsonl``
    (official schema; filenames in the GenEval layout's form) and ``summary.json``.
    """
    if n_images < 1 or batch_size < 1:
        raise ValueError(f"n_images and batch_size must be >= 1, got {n_images}, {batch_size}")
    detector = detector or ShapesDetector()
    color_classifier = color_classifier or ShapesColorClassifier()
    prompts = shapes.prompt_set(split, n_per_tag, seed)
    noise = seed if sample_seed is None else sample_seed
    items = [{"index": i, "k": k, "prompt": m["prompt"], "metadata": m, "seed": image_seed(noise, i, k)}
             for i, m in enumerate(prompts) for k in range(n_images)]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(items), desc="shapes bench", unit="img")
    results, images = [], []
    for s in range(0, len(items), batch_size):
        chunk = items[s:s + batch_size]
        out = np.asarray(generate_fn(chunk))
        if out.ndim != 4 or out.shape[0] != len(chunk) or out.shape[-1] != 3 or out.dtype != np.uint8:
            raise ValueError(f"generate_fn returned {out.dtype} {out.shape} for {len(chunk)} items; "
                             f"expected uint8 ({len(chunk)}, H, W, 3)")
        for it, img in zip(chunk, out):
            raw = detector.detect(img)
            results.append(score_image(img, raw, it["metadata"], color_classifier, params=params,
                                       filename=f"{it['index']:05d}/samples/{it['k']:04d}.png"))
            images.append(img)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    summary = summarize(results, prompts, n_images)
    report = {k: summary[k] for k in ("per_tag", "overall", "counts", "n_prompts", "n_images",
                                      "correct_images")}
    report["one_object"] = one_object_attributes(images, [it["metadata"] for it in items], detector)
    if outdir:
        _write(outdir, items, images, results, report, n_images, grid_prompts)
    return report


def one_object_attributes(images, metadata, detector=None) -> dict:
    """Where a pass/fail score hides *why* images fail: for the one-object prompts
    (:data:`ONE_OBJECT_TAGS`), the share of images with exactly one detected component, and for
    each image's largest component whether its best-matching shape (template IoU, whatever
    the score) and its colour (``colors`` prompts) are the requested ones, plus its IoU with
    the requested shape's template. Chance for the shape is 1/6."""
    detector = detector or ShapesDetector()
    n = one = shape_ok = color_ok = n_color = 0
    ious = []
    for img, md in zip(images, metadata):
        if md["tag"] not in ONE_OBJECT_TAGS:
            continue
        want = md["include"][0]
        comps = detector.components(img)
        n += 1
        one += len(comps) == 1
        n_color += "color" in want
        if not comps:
            ious.append(0.0)
            continue
        big = max(comps, key=lambda c: int(c["crop"].sum()))
        best, _, per_shape = classify_mask(big["crop"], detector.shapes)
        ious.append(per_shape.get(want["class"], 0.0))
        shape_ok += best == want["class"]
        color_ok += "color" in want and big["color"] == want["color"]
    if n == 0:
        return {"n": 0}
    return {"n": n, "one_component": one / n, "shape_acc": shape_ok / n,
            "color_acc": color_ok / n_color if n_color else None, "iou_requested_shape": float(np.mean(ious))}


def format_one_object(a: dict) -> str:
    if not a.get("n"):
        return "one-object prompts: none scored"
    color = "n/a" if a["color_acc"] is None else f"{a['color_acc']:.2f}"
    return (f"one-object prompts ({a['n']} images): exactly one object {a['one_component']:.2f}, largest object's "
            f"shape right {a['shape_acc']:.2f} (chance 0.17), colour right {color}, "
            f"IoU with the requested shape {a['iou_requested_shape']:.2f}")


def _write(outdir, items, images, results, report, n_images, grid_prompts):
    from PIL import Image
    os.makedirs(outdir, exist_ok=True)
    for tag in shapes.TAGS:
        sel = [img for it, img in zip(items, images) if it["metadata"]["tag"] == tag]
        sel = sel[:grid_prompts * n_images]
        if sel:
            Image.fromarray(_grid(sel, n_images)).save(os.path.join(outdir, f"grid_{tag}.png"))
    with open(os.path.join(outdir, "results.jsonl"), "w") as fh:
        for r in results:
            fh.write(json.dumps(r) + "\n")
    with open(os.path.join(outdir, "summary.json"), "w") as fh:
        json.dump(report, fh, indent=2)
