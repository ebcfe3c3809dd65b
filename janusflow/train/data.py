"""Training data iterators: host batches in the train-step layout, with a JSON-able,
restorable position (``get_state``/``set_state``) so resumed runs continue exactly."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from janusflow.configs.schema import ExperimentConfig
from janusflow.train.synthetic import synthetic_batch


class SyntheticIterator:
    """Batch k is a pure function of (seed, k): deterministic and trivially resumable. Each of
    ``process_count`` processes gets its contiguous block of the global batch's rows, so a
    multi-process run trains on exactly the batches of a single-process one."""

    def __init__(self, cfg: ExperimentConfig, process_index: int | None = None, process_count: int | None = None):
        if process_index is None or process_count is None:
            process_index, process_count = jax.process_index(), jax.process_count()
        self.cfg, self.position = cfg, 0
        self.process_index, self.process_count = process_index, process_count

    def __iter__(self):
        return self

    def _rows(self, x):
        n = x.shape[0]
        if n % self.process_count:
            raise ValueError(f"a batch of {n} rows is not divisible by the {self.process_count} processes")
        k = n // self.process_count
        return np.asarray(x[self.process_index * k:(self.process_index + 1) * k])

    def __next__(self):
        batch = synthetic_batch(self.cfg, seed=self.cfg.train.seed * 1_000_003 + self.position)
        self.position += 1
        return jax.tree.map(self._rows, batch)

    def set_batch_sizes(self, sizes: dict) -> None:
        """``sizes``: this process's rows per task (as the pipeline takes them); the synthetic
        batch is made global and split in ``_rows``."""
        n = self.process_count
        t = dataclasses.replace(self.cfg.train, und_batch=sizes["und"] * n, gen_batch=sizes["gen"] * n,
                                text_batch=sizes["text"] * n, task_batch_schedule=())
        self.cfg = dataclasses.replace(self.cfg, train=t)

    def get_state(self) -> dict:
        return {"position": self.position}

    def set_state(self, state: dict) -> None:
        pos = state.get("position")
        if not isinstance(pos, int) or pos < 0:
            raise ValueError(f"bad synthetic iterator state {state!r}")
        self.position = pos


def make_data_iterator(cfg: ExperimentConfig):
    """Synthetic batches when ``cfg.synthetic_data``, else the TFDS/grain pipeline of ``cfg.data``."""
    if cfg.synthetic_data:
        return SyntheticIterator(cfg)
    from janusflow.data.pipeline import make_pipeline
    return make_pipeline(cfg, cfg.data)
