"""The loop does not wait for the devices every step: metrics (and the finiteness flag) are
fetched at log and checkpoint steps only, the next batch is on the devices before the step
that reads it is dispatched, and a non-finite step is still named exactly."""

import os

import jax
import numpy as np
import pytest

from janusflow.configs import presets
from janusflow.configs.schema import ExperimentConfig, MeshConfig, OptimConfig, TrainConfig
from janusflow.train import loop
from janusflow.train.data import SyntheticIterator
from janusflow.train.prefetch import DevicePrefetcher
from janusflow.train.step import NonFiniteLoss

# one config for every loop test here: its step is compiled once per process (loop._COMPILED)
CFG = ExperimentConfig(name="async", model=presets.tiny(repa=False), seq_len=256, synthetic_data=True,
                       train=TrainConfig(stage=2, steps=6, und_batch=0, gen_batch=2, text_batch=0, log_every=3,
                                         ckpt_every=3, optim=OptimConfig(lr=1e-3, warmup_steps=2),
                                         mesh=MeshConfig(data=1)))


class Counting:
    """A host iterator that records when each batch is read."""

    def __init__(self, events):
        self.n, self.events = 0, events

    def __next__(self):
        self.events.append(("read", self.n))
        self.n += 1
        return {"x": np.full((2,), self.n)}

    def get_state(self):
        return {"position": self.n}


def test_prefetcher_reads_ahead_and_carries_the_position_after_each_batch():
    events = []
    pre = DevicePrefetcher(Counting(events), lambda b: b, depth=2, limit=3)
    assert pre.peek()["x"][0] == 1 and events == [("read", 0)]
    batch, state = next(pre)
    # the second batch was read (and placed) before the first is handed out
    assert events == [("read", 0), ("read", 1)] and batch["x"][0] == 1 and state == {"position": 1}
    assert next(pre)[1] == {"position": 2}
    assert next(pre)[1] == {"position": 3}
    with pytest.raises(StopIteration):            # the limit: no batch past the last step is read
        next(pre)
    assert len(events) == 3


def test_loop_fetches_metrics_only_at_log_steps_and_places_batches_ahead(tmp_path, monkeypatch):
    events = []
    place, compiled = loop.to_global, loop._compiled_step

    def to_global(batch, mesh):
        events.append("place")
        return place(batch, mesh)

    def compiled_step(*a):
        fn = compiled(*a)

        def step(state, batch):
            events.append("step")
            return fn(state, batch)
        return step

    fetched = []
    real_get = jax.device_get

    def device_get(x):
        if isinstance(x, (dict, list)) and "finite" in str(jax.tree.structure(x)):
            fetched.append(len(x) if isinstance(x, list) else 1)
        return real_get(x)

    monkeypatch.setattr(loop, "to_global", to_global)
    monkeypatch.setattr(loop, "_compiled_step", compiled_step)
    monkeypatch.setattr(jax, "device_get", device_get)
    loop.train(CFG, str(tmp_path), devices=jax.devices()[:1], log=lambda *_: None)
    # metrics of 6 steps come back in two fetches (steps 3 and 6), 3 steps each
    assert fetched == [3, 3]
    # before step k is dispatched, batch k+1 is already on its way to the devices
    assert events[:3] == ["place", "place", "step"]
    steps = [i for i, e in enumerate(events) if e == "step"]
    for k, i in enumerate(steps[:-1]):
        assert events[:i].count("place") >= k + 2, events
    assert events.count("place") == 6                 # no batch read past the last step
    lines = open(tmp_path / "metrics.jsonl").read().splitlines()
    assert [int(l.split('"step": ')[1].split(",")[0]) for l in lines] == [3, 6]


class NanAt(SyntheticIterator):
    """Synthetic batches, the one at ``bad`` with a NaN pixel."""

    def __init__(self, cfg, bad):
        super().__init__(cfg, 0, 1)
        self.bad = bad

    def __next__(self):
        pos = self.position
        batch = super().__next__()
        if pos == self.bad:
            batch["gen"]["images"] = np.asarray(batch["gen"]["images"]).copy()
            batch["gen"]["images"][0, 0, 0, 0] = np.nan
        return batch


def test_non_finite_step_is_named_and_nothing_after_it_is_saved(tmp_path):
    with pytest.raises(NonFiniteLoss, match=r"step 4: .*loss_rf=nan.*no checkpoint is written after step 4"):
        loop.train(CFG, str(tmp_path), data_iter=NanAt(CFG, bad=4), devices=jax.devices()[:1],
                   log=lambda *_: None)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3"]
    assert not (tmp_path / "model").exists()
