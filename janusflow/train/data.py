"""Training data iterators: host batches in the train-step layout, with a JSON-able,
restorable position (``get_state``/``set_state``) so resumed runs continue exactly."""

from __future__ import annotations

import dataclasses

from janusflow.config import ExperimentConfig
from janusflow.train.synthetic import synthetic_batch


class SyntheticIterator:
    """Batch k is a pure function of (seed, k): deterministic and trivially resumable."""

    def __init__(self, cfg: ExperimentConfig):
        self.cfg, self.position = cfg, 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = synthetic_batch(self.cfg, seed=self.cfg.train.seed * 1_000_003 + self.position)
        self.position += 1
        return batch

    def set_batch_sizes(self, sizes: dict) -> None:
        t = dataclasses.replace(self.cfg.train, und_batch=sizes["und"], gen_batch=sizes["gen"],
                                text_batch=sizes["text"], task_batch_schedule=())
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
