"""Ratio schedule inside one run (paper stage 2: 30:50:20 for the first 10k steps, then
14:80:6): per-task rows change between compiled step variants that share one train state, so
AdamW moments, the warm-up position and the EMA run on; and a plain run re-rounds task batches
that do not divide over the mesh, as --platform does."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from janusflow.configs import presets
from janusflow.checkpoint.model_io import load_model
from janusflow.configs.schema import ConfigError, ExperimentConfig, MeshConfig, OptimConfig, TrainConfig
from janusflow.data.mixing import batch_phases, task_batches_at, with_ratio_schedule, with_task_ratios
from janusflow.parallel.mesh import make_mesh
from janusflow.perf.platforms import fit_batches_to_mesh
from janusflow.train import loop
from janusflow.train.data import SyntheticIterator

# steps 0-1: gen 2 + text 2 rows; steps 2-3: gen 4 rows, no text
SCHEDULE = ((2, 0, 2, 2),)


def _cfg(**kw):
    t = dict(stage=2, steps=4, und_batch=0, gen_batch=4, text_batch=0, log_every=1, ckpt_every=100,
             optim=OptimConfig(lr=1e-3, warmup_steps=4), mesh=MeshConfig(data=1),
             task_batch_schedule=SCHEDULE)
    t.update(kw)
    return ExperimentConfig(name="schedule", model=presets.tiny(repa=False), seq_len=256,
                            train=TrainConfig(**t), synthetic_data=True)


def _params(path):
    model, _ = load_model(path)
    return jax.device_get(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_schedule_lookup_and_phases():
    t = _cfg().train
    assert task_batches_at(t, 0) == task_batches_at(t, 1) == {"und": 0, "gen": 2, "text": 2}
    assert task_batches_at(t, 2) == {"und": 0, "gen": 4, "text": 0}
    assert [(a, b) for a, b, _ in batch_phases(t)] == [(0, 2), (2, 4)]
    base = with_task_ratios(ExperimentConfig(train=TrainConfig(steps=390_000)), (14, 80, 6), 512)
    cfg = with_ratio_schedule(base, ((10_000, (30, 50, 20), 512),))
    assert cfg.train.task_batch_schedule == ((10_000, 154, 256, 102),)
    assert task_batches_at(cfg.train, 9_999)["und"] == 154 and task_batches_at(cfg.train, 10_000)["und"] == 72


@pytest.mark.parametrize("entry", [(2, 1, 1), (0, 1, 1, 1), (2, 0, 0, 0), (2, 1.5, 1, 1)])
def test_bad_schedule_entry_is_named(entry):
    with pytest.raises(ConfigError, match=r"task_batch_schedule\[0\]"):
        _cfg(task_batch_schedule=(entry,))


@pytest.mark.slow
def test_one_run_switches_batches_without_restarting_optimizer(tmp_path):
    logs = []
    cfg = _cfg()
    loop.train(cfg, str(tmp_path / "run"), devices=jax.devices()[:1], log=logs.append)
    assert any("step 2: task batches und:gen:text now 0:4:0" in m for m in logs), logs
    # one compiled step per phase, not per step
    variants = [k for k in loop._COMPILED if k[0] == cfg]
    assert len(variants) == 2
    # the warm-up runs on across the switch (a restarted phase would log lr 0 at step 2)
    lrs = [m["lr"] for m in _metrics(tmp_path / "run")]
    np.testing.assert_allclose(lrs, [0.0, 2.5e-4, 5e-4, 7.5e-4], rtol=1e-6)
    # the same state carried through both variants: replay by hand with the loop's own pieces
    mesh = make_mesh(cfg.train.mesh, devices=jax.devices()[:1])
    from janusflow.train.state import init_state, merge_model
    parts, state, shardings = init_state(cfg, mesh)
    it = SyntheticIterator(cfg)
    for step in range(4):
        it.set_batch_sizes(task_batches_at(cfg.train, step))
        batch = loop.to_global(next(it), mesh)
        state, _ = loop._compiled_step(cfg, parts, shardings, mesh, batch)(state, batch)
    assert int(state.opt_state[1][0].count) == 4          # one AdamW state, four updates
    want = jax.device_get(nnx.to_pure_dict(nnx.state(merge_model(parts, state.params, state.frozen), nnx.Param)))
    got = _params(str(tmp_path / "run" / "model"))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), got, want)


@pytest.mark.slow
def test_resume_across_the_switch_equals_uninterrupted(tmp_path):
    cfg = _cfg()
    loop.train(cfg, str(tmp_path / "full"), devices=jax.devices()[:1], log=lambda m: None)
    loop.train(cfg, str(tmp_path / "cut"), devices=jax.devices()[:1], log=lambda m: None, stop_at=1)
    loop.train(cfg, str(tmp_path / "cut"), devices=jax.devices()[:1], log=lambda m: None)
    a, b = _params(str(tmp_path / "full" / "model")), _params(str(tmp_path / "cut" / "model"))
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), a, b)


def test_plain_run_rerounds_batches_that_do_not_divide_the_mesh():
    cfg = with_task_ratios(ExperimentConfig(train=TrainConfig(steps=10)), (14, 80, 6), 512)
    cfg = with_ratio_schedule(cfg, ((5, (30, 50, 20), 512),))
    assert (cfg.train.und_batch, cfg.train.gen_batch, cfg.train.text_batch) == (72, 409, 31)
    logs = []
    out = fit_batches_to_mesh(cfg, 8, log=logs.append)
    t = out.train
    assert all(n % 8 == 0 for n in (t.und_batch, t.gen_batch, t.text_batch))
    assert t.und_batch + t.gen_batch + t.text_batch == 512
    assert all(n % 8 == 0 for n in t.task_batch_schedule[0][1:]) and sum(t.task_batch_schedule[0][1:]) == 512
    assert len(logs) == 1 and "re-rounded" in logs[0] and "72:409:31" in logs[0]
    # already divisible: unchanged and silent
    logs.clear()
    assert fit_batches_to_mesh(out, 8, log=logs.append) is out and not logs
    # a total that cannot split is one clear error
    with pytest.raises(ConfigError, match="multiples of 8"):
        fit_batches_to_mesh(with_task_ratios(cfg, (14, 80, 6), 100), 8)


@pytest.mark.slow
def test_plain_run_on_8_devices_rerounds_and_trains(tmp_path):
    cfg = _cfg(steps=1, gen_batch=4, text_batch=0, task_batch_schedule=(), mesh=MeshConfig(data=-1))
    cfg = with_task_ratios(cfg, (0, 9, 7), 16)        # gen 9 + text 7: neither divides 8 devices
    logs = []
    loop.train(cfg, str(tmp_path / "run"), log=logs.append)
    assert any("re-rounded" in m and "0:9:7 -> 0:8:8" in m for m in logs), logs
