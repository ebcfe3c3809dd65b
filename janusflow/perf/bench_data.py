"""``janusflow bench data``: examples/s of the input pipeline beside the train step's.

Three numbers, each the median of ``repeats`` timed runs of ``batches`` batches after one
warm-up batch:
  1. the loader on the built-in shapes dataset at the experiment's resolution;
  2. the loader on a user-style image-text dataset at 384 px (JanusFlow-1.3B preprocessing:
     640x480 JPEGs -> short-side resize + random crop for generation, long-side resize + pad
     for understanding, SigLIP + VAE inputs), built locally from random images with
     ``janusflow data build``;
  3. the jitted train step of the experiment (``init_state`` + ``jit_train_step``) on a batch
     from the shapes pipeline, and the step fed live by the pipeline (loader threads and XLA
     share the CPU here).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import tempfile
import time

import numpy as np


def _n_examples(batch) -> int:
    return sum(next(iter(b.values())).shape[0] for b in batch.values())


def loader_rate(it, batches: int, repeats: int) -> tuple[float, list]:
    n = _n_examples(next(it))                   # warm-up: threads start, files open
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(batches):
            next(it)
        rates.append(n * batches / (time.perf_counter() - t0))
    return statistics.median(rates), rates


def _random_photos(folder: str, n: int, seed: int = 0, size=(640, 480)):
    """JPEGs with smooth structure + grain (realistic file sizes, unlike pure noise)."""
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        low = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(low).resize(size, Image.Resampling.BICUBIC), np.float32)
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)
        lines.append({"image": f"{i:05d}.jpg", "caption": f"a photo number {i} of smooth colour blobs",
                      "qa": [{"question": "What is in the picture?", "answer": f"colour blobs {i}"}]})
    path = os.path.join(folder, "captions.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(x) + "\n" for x in lines)
    return path


def run(cfg, repeats: int = 3, batches: int = 10, work_dir: str | None = None, threads: int = 2,
        n_photos: int = 256, log=print) -> dict:
    from janusflow.configs.schema import ExperimentConfig, TrainConfig
    from janusflow.data.build import build_image_text
    from janusflow.configs.data import DataConfig
    from janusflow.data.pipeline import make_pipeline
    from janusflow.shapes.dataset import build_shapes, shapes_config
    from janusflow.configs.data import SourceConfig
    from janusflow.configs.presets import janusflow_1_3b

    out = {}
    work = work_dir or tempfile.mkdtemp(prefix="janusflow_bench_data_")
    size = cfg.model.image_size
    shapes_dir = build_shapes(os.path.join(work, "tfds"), shapes_config(size, 512, 64))
    src = SourceConfig(name=shapes_dir)
    data = DataConfig(und=src, gen=src, text=dataclasses.replace(src, text="description"),
                      num_threads=threads)
    it = make_pipeline(cfg, data, process_index=0, process_count=1)
    med, rates = loader_rate(it, batches, repeats)
    per_batch = _n_examples(next(it))
    out["shapes_loader_examples_per_s"] = med
    log(f"loader, janusflow_shapes {size}px ({per_batch} examples/batch, {threads} threads): "
        f"{med:.0f} examples/s (runs: {', '.join(f'{r:.0f}' for r in rates)})")

    photos = os.path.join(work, "photos")
    ds_dir = os.path.join(work, "tfds", "bench_photos", "1.0.0")
    if not os.path.isdir(ds_dir):
        caps = _random_photos(photos, n_photos)
        build_image_text(photos, caps, os.path.join(work, "tfds"), "bench_photos", log=lambda *_: None)
    big = ExperimentConfig(name="bench_384", model=janusflow_1_3b(), seq_len=4096,
                           train=TrainConfig(und_batch=8, gen_batch=8, text_batch=0))
    psrc = SourceConfig(name=ds_dir)
    it = make_pipeline(big, DataConfig(und=psrc, gen=psrc, num_threads=threads),
                       process_index=0, process_count=1)
    med, rates = loader_rate(it, max(2, batches // 2), repeats)
    out["image_text_384_loader_examples_per_s"] = med
    log(f"loader, image-text 640x480 JPEG -> 384 px (und 8 + gen 8 per batch, {threads} threads): "
        f"{med:.1f} examples/s (runs: {', '.join(f'{r:.1f}' for r in rates)})")

    out.update(_step_rates(cfg, data, repeats, batches, log))
    out["work_dir"] = work
    return out


def _step_rates(cfg, data, repeats, batches, log) -> dict:
    import jax

    from janusflow.data.pipeline import make_pipeline
    from janusflow.parallel.mesh import make_mesh
    from janusflow.train.state import init_state
    from janusflow.train.step import check_finite, jit_train_step

    it = make_pipeline(cfg, data, process_index=0, process_count=1)
    batch = next(it)
    n = _n_examples(batch)
    mesh = make_mesh(cfg.train.mesh)
    parts, state, shardings = init_state(cfg, mesh)
    step = jit_train_step(cfg, parts, shardings, mesh, batch)
    state, m = step(state, batch)                # compile + first step
    check_finite(0, jax.device_get(m))
    fixed, live = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(batches):
            state, m = step(state, batch)
        jax.block_until_ready(m)
        fixed.append(n * batches / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for _ in range(batches):
            state, m = step(state, next(it))
        check_finite(int(state.step), jax.device_get(m))
        live.append(n * batches / (time.perf_counter() - t0))
    out = {"train_step_examples_per_s": statistics.median(fixed),
           "train_step_with_loader_examples_per_s": statistics.median(live)}
    log(f"train step ({cfg.name}, {n} examples/batch, {jax.device_count()} device(s)): "
        f"{out['train_step_examples_per_s']:.1f} examples/s on a fixed batch, "
        f"{out['train_step_with_loader_examples_per_s']:.1f} examples/s fed by the pipeline")
    return out
