"""GenEval end to end: generate the official folder layout with a JanusFlow checkpoint, score it
with a detector + colour classifier, summarise (see ``geneval_score`` / ``geneval_layout``).

Detectors and colour classifiers (interfaces in :mod:`janusflow.eval.geneval_score`):

- :class:`Mask2FormerDetector` / :class:`ClipColorClassifier`: the official models through
  mmdet 2.x (+ mmcv-full 1.7) and open_clip, imported only when built. They need downloaded
  weights and, for mmdet 2.x, CUDA; nothing here downloads anything.
- :class:`PrecomputedDetections` (+ :class:`PrecomputedColors`): detections made elsewhere.
- the shapes world's analytic :class:`~janusflow.shapes.detector.ShapesDetector`.

Precomputed detections schema. Image keys are paths relative to the layout folder with ``/``
separators (``"00012/samples/0003.png"``); every image of the layout must have a key (``{}``
for no detections).

- JSON: ``{"images": {KEY: {CLASS: [[x0, y0, x1, y1, score], ...]}},
  "colors": {KEY: {CLASS: ["red", ...]}}}`` -- ``colors`` optional, aligned with the boxes;
  no masks (the CLIP classifier then crops the box without compositing, as the official code
  does when a detector gives no masks).
- NPZ: arrays ``"KEY|CLASS|boxes"`` float (N, 5), optional ``"KEY|CLASS|masks"`` bool
  (N, H, W) and ``"KEY|CLASS|colors"`` str (N,); ``"KEY|"`` (any value) marks an image with
  no detections.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Callable, Optional

import numpy as np

from janusflow.eval import geneval_layout as layout
from janusflow.eval.geneval_score import (GENEVAL_COLORS, Det, ScoreParams, score_image,
                                          summarize)

MASK2FORMER_CONFIG = "configs/mask2former/mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.py"
COLOR_TEMPLATES = ("a photo of a {c} {cls}", "a photo of a {c}-colored {cls}", "a photo of a {c} object")


def _need(package: str, why: str, hint: str):
    import importlib
    try:
        return importlib.import_module(package)
    except ImportError as e:
        raise ImportError(f"{why} needs the '{package}' package, which is not importable ({e}); "
                          f"{hint}") from e


# ------------------------------------------------------------------ official models


class Mask2FormerDetector:
    """Mask2Former Swin-S through mmdet 2.x, classes from ``object_names.txt`` (detector order)."""

    def __init__(self, checkpoint: str, object_names: str, config: Optional[str] = None,
                 device: str = "cuda"):
        mmdet = _need("mmdet", "the Mask2Former detector",
                      "install mmdet 2.x with mmcv-full 1.7 (the official GenEval environment)")
        apis = _need("mmdet.apis", "the Mask2Former detector", "install mmdet 2.x")
        with open(object_names) as fh:
            self.classes = [line.strip() for line in fh if line.strip()]
        config = config or os.path.join(os.path.dirname(mmdet.__file__), "..", MASK2FORMER_CONFIG)
        self._infer = apis.inference_detector
        self.model = apis.init_detector(config, checkpoint, device=device)

    def detect(self, image, path=None) -> dict:
        # mmdet reads files itself; an in-memory array must be BGR.
        result = self._infer(self.model, path if path else np.ascontiguousarray(image[..., ::-1]))
        bbox = result[0] if isinstance(result, tuple) else result
        segm = result[1] if isinstance(result, tuple) and len(result) > 1 else None
        out = {}
        for ci, cls in enumerate(self.classes):
            out[cls] = [Det(np.asarray(bbox[ci][j], np.float64),
                            None if segm is None else np.asarray(segm[ci][j], bool))
                        for j in range(len(bbox[ci]))]
        return out


class ClipColorClassifier:
    """Zero-shot colour of each detection with CLIP (default ViT-L/14, OpenAI weights): the
    image composited over ``bgcolor`` through the mask, cropped to the box; each colour's text
    embedding the mean of the normalised embeddings of :data:`COLOR_TEMPLATES`."""

    def __init__(self, arch: str = "ViT-L-14", pretrained: str = "openai", device: str = "cpu",
                 bgcolor: str = "#999", colors=GENEVAL_COLORS):
        open_clip = _need("open_clip", "the CLIP colour classifier", "pip install open_clip_torch")
        self.torch = _need("torch", "the CLIP colour classifier", "pip install torch")
        self.model, _, self.transform = open_clip.create_model_and_transforms(
            arch, pretrained=pretrained, device=device)
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.device, self.bgcolor, self.colors = device, bgcolor, tuple(colors)
        self._heads = {}

    def _normalize(self, x):
        return x / x.norm(dim=-1, keepdim=True)

    def _head(self, classname):
        if classname not in self._heads:
            torch = self.torch
            with torch.no_grad():
                cols = []
                for c in self.colors:
                    texts = [t.format(c=c, cls=classname) for t in COLOR_TEMPLATES]
                    emb = self._normalize(self.model.encode_text(self.tokenizer(texts).to(self.device)))
                    cols.append(self._normalize(emb.mean(0)))
                self._heads[classname] = torch.stack(cols, 1)
        return self._heads[classname]

    def crops(self, image, dets):
        from PIL import Image
        pil = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
        blank = Image.new("RGB", pil.size, color=self.bgcolor)
        out = []
        for d in dets:
            im = pil if d.mask is None else Image.composite(pil, blank, Image.fromarray(np.asarray(d.mask, bool)))
            out.append(im.crop(tuple(float(v) for v in d.box[:4])))
        return out

    def classify(self, image, dets, classname) -> list:
        if not dets:
            return []
        torch = self.torch
        head = self._head(classname)
        batch = torch.stack([self.transform(c) for c in self.crops(image, dets)]).to(self.device)
        with torch.no_grad():
            feats = self._normalize(self.model.encode_image(batch))
            idx = (feats @ head).argmax(1).tolist()
        return [self.colors[i] for i in idx]


# ------------------------------------------------------------------ precomputed


def _key(path: str, root: Optional[str]) -> str:
    rel = os.path.relpath(path, root) if root else path
    return rel.replace(os.sep, "/")


def _boxes(v, where: str) -> np.ndarray:
    """[[x0, y0, x1, y1, score], ...] of finite numbers (not strings or booleans) as (N, 5)."""
    ok = isinstance(v, list) and all(
        isinstance(b, list) and len(b) == 5 and all(type(x) in (int, float) for x in b) for b in v)
    a = np.asarray(v, np.float64).reshape(-1, 5) if ok else None
    if a is None or not np.isfinite(a).all():
        raise ValueError(f"{where}: expected a list of [x0, y0, x1, y1, score] numbers")
    return a


class PrecomputedDetections:
    """Detections read from a JSON or NPZ file (schema in the module docstring)."""

    def __init__(self, path: str, root: Optional[str] = None):
        self.path, self.root = path, root
        self.images = {}
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                for name in z.files:
                    key, _, rest = name.partition("|")
                    entry = self.images.setdefault(key, {})
                    if not rest:
                        continue
                    cls, _, field = rest.rpartition("|")
                    entry.setdefault(cls, {})[field] = z[name]
        else:
            with open(path) as fh:
                data = json.load(fh)
            if not isinstance(data, dict) or not isinstance(data.get("images"), dict):
                raise ValueError(f"{path}: expected a JSON object with an 'images' mapping")
            colors = data.get("colors") or {}
            if not isinstance(colors, dict) or not all(isinstance(c, dict) for c in colors.values()):
                raise ValueError(f"{path}: field 'colors': expected {{image: {{class: [colour, ...]}}}}")
            for key, per_cls in data["images"].items():
                if not isinstance(per_cls, dict):
                    raise ValueError(f"{path}: field 'images.{key}': expected {{class: [[x0, y0, x1, y1, score], ...]}}")
                entry = self.images.setdefault(key, {})
                for cls, boxes in per_cls.items():
                    entry[cls] = {"boxes": _boxes(boxes, f"{path}: field 'images.{key}.{cls}'")}
                    col = colors.get(key, {}).get(cls)
                    if col is not None:
                        if not (isinstance(col, list) and all(isinstance(c, str) for c in col)):
                            raise ValueError(f"{path}: field 'colors.{key}.{cls}': expected a list of colour names")
                        entry[cls]["colors"] = np.asarray(col)
        for key, entry in self.images.items():
            for cls, f in entry.items():
                n = len(f.get("boxes", ()))
                if "boxes" not in f or np.asarray(f["boxes"]).shape != (n, 5):
                    raise ValueError(f"{path}: {key} / {cls}: boxes must have shape (N, 5)")
                for extra in ("masks", "colors"):
                    if extra in f and len(f[extra]) != n:
                        raise ValueError(f"{path}: {key} / {cls}: {len(f[extra])} {extra} for {n} boxes")

    def detect(self, image, path=None) -> dict:
        key = _key(path, self.root) if path else None
        if key not in self.images:
            raise KeyError(f"{self.path} has no detections for image {key!r} (keys are paths "
                           f"relative to the layout folder, e.g. '00000/samples/0000.png')")
        out = {}
        for cls, f in self.images[key].items():
            masks, colors = f.get("masks"), f.get("colors")
            out[cls] = [Det(np.asarray(b, np.float64), None if masks is None else np.asarray(masks[j], bool),
                            None if colors is None else str(colors[j]))
                        for j, b in enumerate(f["boxes"])]
        return out


class PrecomputedColors:
    """Colour classifier returning the colours stored with precomputed detections."""

    def classify(self, image, dets, classname) -> list:
        missing = [d for d in dets if d.color is None]
        if missing:
            raise ValueError(f"the detections file has no colour for a {classname!r} detection; "
                             f"add 'colors' to it or choose another colour classifier")
        return [d.color for d in dets]


# ------------------------------------------------------------------ scoring a layout


def score_layout(outdir: str, detector, color_classifier, *, params: ScoreParams = ScoreParams(),
                 out_jsonl: Optional[str] = None, progress: bool = False) -> list:
    """Score every image the official reader finds in ``outdir``; optionally write the
    results-jsonl. Returns the records."""
    items = layout.read_layout(outdir)
    if progress:
        from tqdm import tqdm
        items = tqdm(items, desc="scoring", unit="img")
    results = []
    for path, meta in items:
        image = layout.load_image(path)
        raw = detector.detect(image, path)
        results.append(score_image(image, raw, meta, color_classifier, filename=path, params=params))
    if out_jsonl:
        if os.path.dirname(out_jsonl):
            os.makedirs(os.path.dirname(out_jsonl), exist_ok=True)
        with open(out_jsonl, "w") as fh:
            for r in results:
                fh.write(json.dumps(r) + "\n")
    return results


# ------------------------------------------------------------------ generating with a model


def load_generator(checkpoint: str, vae_path: Optional[str] = None, dtype: Optional[str] = None):
    """``(model, vae, cfg, tokenizer)`` for sampling. The VAE: none needed for the pixel VAE of
    tiny configs; otherwise ``vae_path`` or ``<checkpoint>/vae`` (a diffusers AutoencoderKL
    directory)."""

    from janusflow.checkpoint import hf, model_io
    from janusflow.data.tokenizer import Tokenizer
    from janusflow.models.build import build_vae
    model, cfg = model_io.load_model(checkpoint, dtype)
    if cfg.head.autoregressive:         # the AR sampler's layout, before anything holds the old copy
        from janusflow.sample.layout import decoding_layout
        model, cfg = decoding_layout(model, cfg)
    if not cfg.head.needs_vae:
        vae = None                     # the VQ tokenizer inside the model makes the images
    elif cfg.vae.kind == "pixel":
        vae = build_vae(cfg.vae)
    else:
        vae_path = vae_path or os.path.join(checkpoint, "vae")
        if not os.path.isdir(vae_path):
            raise FileNotFoundError(f"the model decodes with an SDXL-style VAE: pass --vae DIR (a "
                                    f"diffusers AutoencoderKL directory); {vae_path} does not exist")
        vae, _ = hf.load_vae(vae_path, dtype or "float32")
    return model, vae, cfg, Tokenizer.from_checkpoint_dir(checkpoint)


def model_generate_fn(model, vae, cfg, tokenizer, *, cfg_weight: Optional[float] = None, steps: int = 30,
                      solver: str = "euler", generate: Optional[Callable] = None) -> Callable:
    """``fn(items) -> uint8 (B, H, W, 3)`` for :func:`geneval_layout.generate_layout`: each
    item's initial noise is ``numpy default_rng(item['seed']).standard_normal(latent shape)``,
    so an image depends only on its own seed. ``generate`` defaults to
    :func:`janusflow.sample.generate.generate` (injectable for tests). A Janus-Pro model samples
    image tokens (``sample/ar_generate.py``) keyed by the item's seed; ``steps``/``solver`` do
    not apply. ``cfg_weight`` None: the generation head's official weight."""
    from janusflow.data.tokenizer import generation_prompt_ids
    from janusflow.sample.generate import latent_shape
    from janusflow.sample.run import default_cfg_weight
    cfg_weight = default_cfg_weight(cfg, cfg_weight)
    if cfg.head.autoregressive:
        from janusflow.sample.ar_generate import generate_ar
        from janusflow.sample.layout import decoding_layout
        model, cfg = decoding_layout(model, cfg)        # once, not per batch

        def fn_ar(items):
            # the image's random stream is keyed by its own seed alone, as the flow noise is
            ids = [generation_prompt_ids(tokenizer, it["prompt"], cfg.head) for it in items]
            return generate_ar(model, cfg, ids, cfg_weight=cfg_weight, seed=0, pad_id=tokenizer.pad_id,
                               key_ids=[it["seed"] for it in items], batch_size=len(items))
        return fn_ar
    if generate is None:
        from janusflow.sample.generate import generate
    shape = latent_shape(cfg)

    def fn(items):
        ids = [generation_prompt_ids(tokenizer, it["prompt"], cfg.head) for it in items]
        noise = np.stack([np.random.default_rng(it["seed"]).standard_normal(shape, dtype=np.float32)
                          for it in items])
        return generate(model, vae, cfg, ids, cfg_weight=cfg_weight, steps=steps, noise=noise,
                        seed=0, solver=solver, batch_size=len(items), progress=False,
                        pad_id=tokenizer.pad_id)
    return fn


def make_protocol(checkpoint: str, metadata_md5: str, *, cfg_weight: float, steps: int, seed: int,
                  resolution: int, solver: str, n: int, n_prompts: int) -> dict:
    return {"checkpoint": os.path.abspath(checkpoint), "metadata_md5": metadata_md5,
            "n_prompts": n_prompts, "cfg": float(cfg_weight), "steps": int(steps),
            "seed": int(seed), "seed_rule": layout.SEED_RULE,
            "noise": "numpy default_rng(image seed).standard_normal(latent shape, float32)",
            "resolution": int(resolution), "solver": solver, "n": int(n)}


def run_generate(checkpoint: str, metadata: Optional[str], outdir: str, *, n: int = 4,
                 cfg_weight: Optional[float] = None,
                 steps: int = 30, seed: int = 0, batch_size: int = 8, solver: str = "euler",
                 vae_path: Optional[str] = None, dtype: Optional[str] = None,
                 progress: bool = True, generator=None, generate: Optional[Callable] = None) -> dict:
    """``janusflow eval geneval generate``: fill ``outdir`` for every prompt of ``metadata`` (None:
    the official list shipped with the package).
    ``generator`` = ``(model, vae, cfg, tokenizer)`` skips :func:`load_generator`."""
    prompts, md5 = layout.load_prompts(metadata)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)
    model, vae, cfg, tok = generator or load_generator(checkpoint, vae_path, dtype)
    from janusflow.sample.run import default_cfg_weight
    cfg_weight = default_cfg_weight(cfg, cfg_weight)
    protocol = make_protocol(checkpoint, md5, cfg_weight=cfg_weight, steps=steps, seed=seed,
                             resolution=cfg.image_size, solver=solver, n=n, n_prompts=len(prompts))
    if cfg.head.autoregressive:
        protocol.update(family=cfg.family, steps=None, solver=None, temperature=1.0,
                        noise="image tokens drawn with fold_in(fold_in(key(0), image seed), token index)")
    fn = model_generate_fn(model, vae, cfg, tok, cfg_weight=cfg_weight, steps=steps, solver=solver,
                           generate=generate)
    return layout.generate_layout(outdir, prompts, protocol, fn, n=n, seed=seed,
                                  batch_size=batch_size, progress=progress, log=log)


def run_score(outdir: str, *, detections: Optional[str] = None, detector: str = "precomputed",
              colors: str = "precomputed", out_jsonl: Optional[str] = None,
              metadata: Optional[str] = None, n: Optional[int] = None, strict: bool = True,
              mask2former: Optional[str] = None, object_names: Optional[str] = None,
              device: str = "cuda") -> dict:
    """``janusflow eval geneval score``: detect, score, write results, summarise."""
    from janusflow.shapes.detector import ShapesColorClassifier, ShapesDetector
    if detections:
        det = PrecomputedDetections(detections, root=outdir)
    elif detector == "shapes":
        det = ShapesDetector()
    elif detector == "mask2former":
        if not (mask2former and object_names):
            raise ValueError("--detector mask2former needs --mask2former CKPT and --object-names FILE")
        det = Mask2FormerDetector(mask2former, object_names, device=device)
    else:
        raise ValueError("pass --detections FILE or --detector shapes|mask2former")
    clf = {"precomputed": PrecomputedColors, "shapes": ShapesColorClassifier,
           "clip": lambda: ClipColorClassifier(device=device)}[colors]()
    results = score_layout(outdir, det, clf, out_jsonl=out_jsonl or os.path.join(outdir, "results.jsonl"),
                           progress=True)
    expected = layout.load_prompts(metadata)[0] if metadata else _expected_from_protocol(outdir)
    if expected is None:             # no prompt file and no protocol: the official list
        expected = layout.load_prompts()[0]
    if n is None and os.path.exists(os.path.join(outdir, layout.PROTOCOL_NAME)):
        with open(os.path.join(outdir, layout.PROTOCOL_NAME)) as fh:
            n = json.load(fh).get("n")
    return summarize(results, expected, n, strict=strict)


def _expected_from_protocol(outdir: str):
    """Without a prompt file, a layout written here knows its prompt count: rebuild the
    expected list from its folders (a missing folder is a missing prompt)."""
    from janusflow.eval.geneval_score import IncompleteResultsError
    ppath = os.path.join(outdir, layout.PROTOCOL_NAME)
    if not os.path.exists(ppath):
        return None
    with open(ppath) as fh:
        n_prompts = json.load(fh).get("n_prompts")
    if not n_prompts:
        return None
    out, missing = [], []
    for i in range(n_prompts):
        mpath = os.path.join(layout.prompt_dir(outdir, i), layout.METADATA_NAME)
        if not os.path.exists(mpath):
            missing.append(f"prompt folder {i:05d} is missing")
            continue
        try:
            with open(mpath, encoding="utf-8") as fh:
                out.append(layout.check_prompt(json.load(fh), mpath))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{mpath}: invalid JSON ({e})") from None
    if missing:
        raise IncompleteResultsError(missing)
    return out
