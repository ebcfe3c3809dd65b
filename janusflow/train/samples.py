"""Samples of fixed prompts during training (``train.sample_every``): the same prompts from the
same noise every time, one image each, as a grid in ``WORKDIR/samples/step_N.png`` and as a
TensorBoard image, so a fine-tune shows the model moving toward its data.

Sampling goes through ``sample/generate.py``, whose ODE integration and decoding are jitted
at module level on (graph, shapes): the first grid compiles, every later one reuses it.
"""

from __future__ import annotations

import io

import numpy as np

from janusflow import paths
from janusflow.data.tokenizer import generation_prompt_ids
from janusflow.sample.generate import generate
from janusflow.sample.grid import make_grid, save_png

SAMPLES_DIR = "samples"
SAMPLE_SEED = 0          # one noise per prompt, the same at every step


def sample_path(workdir: str, step: int) -> str:
    return paths.join(workdir, SAMPLES_DIR, f"step_{step:06d}.png")


class FixedPromptSampler:
    """``sampler(step, model, vae)`` -> the grid (uint8), also written to the workdir and
    ``writer`` (process 0 only writes)."""

    def __init__(self, cfg, tokenizer, workdir: str, writer, *, primary: bool = True, mesh=None):
        t = cfg.train
        self.cfg, self.workdir, self.writer, self.primary, self.mesh = cfg, workdir, writer, primary, mesh
        self.prompt_ids = [generation_prompt_ids(tokenizer, p, cfg.model.head) for p in t.sample_prompts]
        self.pad_id = tokenizer.pad_id

    def due(self, step: int) -> bool:
        every = self.cfg.train.sample_every
        return every > 0 and step % every == 0

    def __call__(self, step: int, model, vae) -> np.ndarray:
        t = self.cfg.train
        images = generate(model, vae, self.cfg.model, self.prompt_ids, cfg_weight=t.sample_cfg_weight,
                          steps=t.sample_steps, seed=SAMPLE_SEED, progress=False, mesh=self.mesh,
                          pad_id=self.pad_id)
        grid = make_grid(images)
        if self.primary:
            write_png(sample_path(self.workdir, step), grid)
            self.writer.write_image("samples", grid, step)
        return grid


def write_png(path: str, image) -> None:
    """A PNG at a local path (atomically) or a ``gs://`` URL."""
    if paths.is_local(path):
        paths.as_path(path).parent.mkdir(parents=True, exist_ok=True)
        save_png(path, image)
        return
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG")
    paths.as_path(path).write_bytes(buf.getvalue())
