"""The training run: exact resume after SIGKILL, SIGTERM checkpoint, corrupt-checkpoint
fallback, stage warm start, and workdir safety."""

import dataclasses
import glob
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from janusflow.configs import presets
from janusflow.checkpoint.manager import CheckpointMismatchError
from janusflow.checkpoint.model_io import load_model
from janusflow.configs.schema import ExperimentConfig, MeshConfig, OptimConfig, TrainConfig
from janusflow.train import loop
from flax import nnx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# tiny gen-only run on one device: small and quick to compile
SETS = ["synthetic_data=true", "model.repa=false", "train.und_batch=0", "train.text_batch=0", "train.gen_batch=2",
        "train.mesh.data=1", "train.optim.warmup_steps=2", "train.optim.lr=1e-3", "train.log_every=1"]


def _cfg(**train_kw):
    base = dict(stage=2, steps=6, und_batch=0, gen_batch=2, text_batch=0, log_every=1, ckpt_every=2,
                optim=OptimConfig(lr=1e-3, warmup_steps=2), mesh=MeshConfig(data=1))
    base.update(train_kw)
    return ExperimentConfig(name="loop", model=presets.tiny(repa=False), seq_len=256,
                            train=TrainConfig(**base), synthetic_data=True)


def train(cfg, workdir, **kw):
    return loop.train(cfg, workdir, devices=jax.devices()[:1], **kw)


def _params(path):
    model, _ = load_model(path)
    return jax.device_get(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def _cli(workdir, steps, ckpt_every, extra=()):
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")  # one device, like the in-process runs
    cmd = [sys.executable, "-m", "janusflow.cli", "train", "--config", "tiny", "--workdir", str(workdir)]
    for s in SETS + [f"train.steps={steps}", f"train.ckpt_every={ckpt_every}", *extra]:
        cmd += ["--set", s]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_until(condition, proc, what, timeout=300):
    """Wait until ``condition()`` holds, waking on the process itself (``proc.wait``) rather than
    sleeping blind: a run that dies early is reported at once, with its output."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        try:
            proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            continue
        if not condition():
            raise AssertionError(f"run ended before {what}:\n{proc.stdout.read()}")


def _has_checkpoint(workdir, step):
    return lambda: os.path.isdir(os.path.join(workdir, "checkpoints", str(step)))


def _has_metrics(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    return lambda: os.path.exists(path) and os.path.getsize(path) > 0


@pytest.mark.slow   # three training processes
def test_sigkill_then_restart_equals_uninterrupted_run(tmp_path):
    # the killed run checkpoints often (it must be caught mid-run); the other two rarely: every
    # save costs time, and where the restart saves does not change its parameters
    killed = _cli(tmp_path / "killed", 24, 2)
    _wait_until(_has_checkpoint(tmp_path / "killed", 4), killed, "checkpoint 4")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not os.path.isdir(tmp_path / "killed" / "model"), "the run finished before it was killed"
    full = _cli(tmp_path / "full", 24, 12)
    restart = _cli(tmp_path / "killed", 24, 12)
    out_full = full.communicate(timeout=600)[0]
    assert full.returncode == 0, out_full
    out = restart.communicate(timeout=600)[0]
    assert restart.returncode == 0, out
    assert "resumed from step" in out
    a, b = _params(tmp_path / "full" / "model"), _params(tmp_path / "killed" / "model")
    jax.tree.map(np.testing.assert_array_equal, a, b)  # bitwise on CPU


def test_sigterm_saves_current_step_and_exits_cleanly(tmp_path):
    proc = _cli(tmp_path, 10_000, 1000)
    _wait_until(_has_metrics(tmp_path), proc, "the first metrics record")
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out
    assert "saved step" in out
    steps = sorted(int(os.path.basename(p)) for p in glob.glob(str(tmp_path / "checkpoints" / "*")) if os.path.basename(p).isdigit())
    assert steps and steps[-1] % 1000 != 0  # saved at the current step, not on schedule
    last_logged = json.loads(open(tmp_path / "metrics.jsonl").read().splitlines()[-1])["step"]
    assert steps[-1] >= last_logged


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path):
    cfg = _cfg(steps=4, ckpt_every=2)
    train(cfg, str(tmp_path), log=lambda *_: None)
    # corrupt every array file of the newest checkpoint
    newest = tmp_path / "checkpoints" / "4" / "state"
    files = [p for p in glob.glob(str(newest / "**" / "*"), recursive=True) if os.path.isfile(p)]
    assert files
    for p in files:
        with open(p, "wb") as f:
            f.write(b"\x00garbage")
    longer = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=6))
    logs = []
    with pytest.warns(UserWarning, match="step 4 .* could not be restored"):
        train(longer, str(tmp_path), log=logs.append)
    assert any("resumed from step 2" in line for line in logs)


def test_stage_two_starts_from_stage_one_weights(tmp_path):
    s1 = _cfg(stage=1, steps=2)
    train(s1, str(tmp_path / "s1"), log=lambda *_: None)
    s2 = _cfg(stage=2, steps=1, init_from=str(tmp_path / "s1"), optim=OptimConfig(lr=1e-3, warmup_steps=0))
    logs = []
    train(s2, str(tmp_path / "s2"), log=logs.append)
    assert any("warm start" in line for line in logs)
    p1 = _params(tmp_path / "s1" / "model")
    p2 = _params(tmp_path / "s2" / "model")
    # SigLIP is frozen in both stages: identical to stage 1's
    jax.tree.map(np.testing.assert_array_equal, p1["und_encoder"], p2["und_encoder"])
    # the LLM was frozen in stage 1, so stage 1's LLM equals its init; stage 2 moved it by one
    # step from there, not from a fresh init: the change is tiny compared with a re-init
    d = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(p1["language_model"]), jax.tree.leaves(p2["language_model"])))
    assert 0 < d < 0.01
    # the generation encoder trained in stage 1 is carried over (moved by one step only)
    e = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(p1["gen_encoder"]), jax.tree.leaves(p2["gen_encoder"])))
    assert e < 0.01


def test_workdir_with_other_model_is_refused_and_kept(tmp_path):
    train(_cfg(steps=2), str(tmp_path), log=lambda *_: None)
    before = sorted(os.listdir(tmp_path / "checkpoints"))
    other = dataclasses.replace(_cfg(steps=4), model=presets.tiny(repa=False, llm=dataclasses.replace(presets.tiny().llm, num_layers=2), repa_layer=2))
    with pytest.raises(CheckpointMismatchError, match="different model"):
        train(other, str(tmp_path), log=lambda *_: None)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before


def test_unwritable_workdir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="not writable"):
        train(_cfg(steps=1), str(blocker / "sub"), log=lambda *_: None)


# ------------------------------------------------------------------ workdir ownership
@pytest.mark.slow   # two training processes
def test_second_run_on_a_workdir_is_refused_in_one_line_and_the_first_is_unharmed(tmp_path):
    first = _cli(tmp_path, 10_000, 1000)
    second = None
    try:
        _wait_until(_has_metrics(tmp_path), first, "the first metrics record")
        second = _cli(tmp_path, 10_000, 1000)
        out = second.communicate(timeout=120)[0]
        assert second.returncode == 1, out
        lines = [line for line in out.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("janusflow train: error: workdir "), out
        assert f"{tmp_path} is in use by another run (pid {first.pid} on host " in lines[0], out
        first.send_signal(signal.SIGTERM)
        out1 = first.communicate(timeout=120)[0]
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert first.returncode == 0 and "saved step" in out1, out1
    steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
    assert steps == list(range(1, len(steps) + 1))  # one run's record, not two interleaved
    assert [p for p in os.listdir(tmp_path / "checkpoints") if not p.isdigit()] == []  # no temporary dirs
    assert not os.path.exists(tmp_path / "janusflow.lock")  # released at the end


def test_a_held_workdir_is_refused_and_a_dead_holders_lock_taken_over(tmp_path):
    from janusflow.train.workdir import WorkdirInUseError, WorkdirLock
    with WorkdirLock(str(tmp_path)):   # another holder (its own flock, as another process has)
        with pytest.raises(WorkdirInUseError, match=f"pid {os.getpid()} on host "):
            train(_cfg(steps=2), str(tmp_path), log=lambda *_: None)
    assert not os.path.exists(tmp_path / "checkpoints")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "janusflow.lock").write_text(json.dumps({"pid": dead.pid, "host": "h", "started": "then"}))
    logs = []
    train(_cfg(steps=2), str(tmp_path), log=logs.append)   # a SIGKILLed run leaves such a file
    assert any(f"(pid {dead.pid} on host h, started then) is gone" in line for line in logs)
    assert os.path.isdir(tmp_path / "model") and not os.path.exists(tmp_path / "janusflow.lock")


def test_user_files_in_the_final_model_folders_survive(tmp_path):
    from janusflow.train.workdir import WorkdirOwnershipError
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "notes.txt").write_text("mine")
    with pytest.raises(WorkdirOwnershipError, match=r"model holds files this run did not write \(notes.txt\)"):
        train(_cfg(steps=2), str(tmp_path), log=lambda *_: None)
    assert not os.path.exists(tmp_path / "checkpoints")   # refused before any training
    os.rename(tmp_path / "model", tmp_path / "mine")
    train(_cfg(steps=2), str(tmp_path), log=lambda *_: None)
    # a file put into the run's own final model folder afterwards
    (tmp_path / "model_ema" / "notes.txt").write_text("mine")
    with pytest.raises(WorkdirOwnershipError, match=r"model_ema holds files this run did not write \(notes.txt\)"):
        train(_cfg(steps=4), str(tmp_path), log=lambda *_: None)
    assert (tmp_path / "model_ema" / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
    os.remove(tmp_path / "model_ema" / "notes.txt")
    logs = []
    train(_cfg(steps=4), str(tmp_path), log=logs.append)   # the run's own folders are replaced
    assert "resumed from step 2 in " + str(tmp_path) in logs and f"saved {tmp_path}/model_ema" in logs
    assert sorted(os.listdir(tmp_path / "model")) == ["janusflow_config.json", "params"]
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def _corrupt(step_dir):
    files = [p for p in glob.glob(str(step_dir / "state" / "**" / "*"), recursive=True) if os.path.isfile(p)]
    assert files
    for p in files:
        with open(p, "wb") as f:
            f.write(b"\x00garbage")


def test_no_restorable_checkpoint_is_refused_unless_starting_over(tmp_path):
    from janusflow.checkpoint.manager import UnrestorableCheckpointsError
    cfg = _cfg(steps=4, ckpt_every=2)
    train(cfg, str(tmp_path), log=lambda *_: None)
    before = _params(tmp_path / "model")
    for step in ("2", "4"):
        _corrupt(tmp_path / "checkpoints" / step)
    with pytest.raises(UnrestorableCheckpointsError,
                       match=f"no checkpoint in {tmp_path}/checkpoints restores \\(step 4: .*; step 2: .*--start-over"):
        train(cfg, str(tmp_path), log=lambda *_: None)
    jax.tree.map(np.testing.assert_array_equal, before, _params(tmp_path / "model"))  # untouched
    logs = []
    train(cfg, str(tmp_path), log=logs.append, start_over=True)
    assert any("starting over" in line for line in logs)
    aside = glob.glob(str(tmp_path / "checkpoints.unrestorable-*"))
    assert len(aside) == 1 and sorted(os.listdir(aside[0])) == ["2", "4"]   # kept, not deleted
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]


def test_non_finite_step_right_after_an_async_save_stops_cleanly(tmp_path):
    from janusflow.train.data import SyntheticIterator
    from janusflow.train.step import NonFiniteLoss

    class NaNAt3(SyntheticIterator):   # the batch of step 3, right after the save at step 2
        def __next__(self):
            batch = super().__next__()
            if self.position == 3:
                batch["gen"]["images"] = batch["gen"]["images"] * np.nan
            return batch

    cfg = _cfg(steps=6, ckpt_every=2)
    logs = []
    with pytest.raises(NonFiniteLoss, match="step 2"):
        train(cfg, str(tmp_path), data_iter=NaNAt3(cfg), log=logs.append)
    # the save in flight was finished, not left as a temporary directory
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
    assert f"stopped; the newest checkpoint in {tmp_path} is step 2" in logs
    logs = []
    train(cfg, str(tmp_path), stop_at=3, log=logs.append)
    assert f"resumed from step 2 in {tmp_path}" in logs
