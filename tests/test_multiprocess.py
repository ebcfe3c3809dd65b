"""Multi-process training on localhost: 2 processes x 2 simulated CPU devices, started the way
a GPU cluster or TPU slice starts them (the same `janusflow train` entry, the coordinator,
process count and id from the environment), train a tiny model, checkpoint, resume, and end
with the parameters of a single process on 4 devices; and the launch arguments are parsed
and checked."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from janusflow.configs.schema import ConfigError
from janusflow.parallel import mesh as mesh_mod

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETS = ["synthetic_data=true", "model.repa=false", "train.und_batch=0", "train.text_batch=0", "train.gen_batch=4",
        "train.mesh.data=-1", "train.optim.warmup_steps=2", "train.optim.lr=1e-3", "train.log_every=1",
        "train.ckpt_every=2"]
TIMEOUT = 600


def _env(devices: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "JANUSFLOW_"))}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""), **extra)
    return env


def _train_cmd(workdir, steps):
    cmd = [sys.executable, "-m", "janusflow.cli", "train", "--config", "tiny", "--workdir", str(workdir)]
    for s in SETS + [f"train.steps={steps}"]:
        cmd += ["--set", s]
    return cmd


def _run_group(workdir, steps, processes: int, devices_each: int) -> list[str]:
    """``processes`` processes of one run; every child is killed if one fails or time runs out."""
    import portpicker
    port = portpicker.pick_unused_port()
    procs = []
    try:
        for i in range(processes):
            extra = {} if processes == 1 else dict(JANUSFLOW_COORDINATOR=f"localhost:{port}",
                                                  JANUSFLOW_NUM_PROCESSES=str(processes), JANUSFLOW_PROCESS_ID=str(i))
            procs.append(subprocess.Popen(_train_cmd(workdir, steps), cwd=REPO, env=_env(devices_each, **extra),
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        outs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    return outs


def _params(path):
    from flax import nnx
    from janusflow.checkpoint.model_io import load_model
    model, _ = load_model(path)
    return jax.device_get(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


@pytest.mark.slow
def test_two_processes_train_checkpoint_resume_equal_one_process(tmp_path):
    one = _run_group(tmp_path / "one", 4, processes=1, devices_each=4)
    assert "resumed" not in one[0]
    first = _run_group(tmp_path / "two", 2, processes=2, devices_each=2)       # steps 0-1, checkpoint at 2
    assert all("initialised a new" in o for o in first)
    assert os.path.isdir(tmp_path / "two" / "checkpoints" / "2")
    second = _run_group(tmp_path / "two", 4, processes=2, devices_each=2)      # resumes at 2, trains 2-3
    assert all("resumed from step 2" in o for o in second), second
    a, b = _params(tmp_path / "one" / "model"), _params(tmp_path / "two" / "model")
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, b)
    exact = all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    print(f"2 processes x 2 devices vs 1 x 4: bitwise equal: {exact}")
    # one process's metrics only (process 0 writes them)
    lines = open(tmp_path / "two" / "metrics.jsonl").read().splitlines()
    assert len(lines) == 4


def test_launch_arguments_from_flags_and_environment(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    env = {"JANUSFLOW_COORDINATOR": "10.0.0.1:1234", "JANUSFLOW_NUM_PROCESSES": "2", "JANUSFLOW_PROCESS_ID": "1"}
    for k in list(os.environ):
        if k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "JANUSFLOW_")):
            monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert mesh_mod.maybe_initialize_distributed() is True
    assert calls == [dict(coordinator_address="10.0.0.1:1234", num_processes=2, process_id=1)]
    # flags win over the environment; JAX's own variables are read too
    assert mesh_mod.distributed_args("h:1", 4, 3, env=env) == dict(coordinator_address="h:1", num_processes=4,
                                                                      process_id=3)
    jax_env = {"JAX_COORDINATOR_ADDRESS": "h:2", "JAX_NUM_PROCESSES": "3", "JAX_PROCESS_ID": "0"}
    assert mesh_mod.distributed_args(env=jax_env) == dict(coordinator_address="h:2", num_processes=3, process_id=0)
    assert mesh_mod.distributed_args(env={}) is None
    assert mesh_mod.distributed_args(env={"JANUSFLOW_DISTRIBUTED": "1"}) == {}     # TPU VMs: discovered
    with pytest.raises(ConfigError, match="JANUSFLOW_NUM_PROCESSES: expected an int, got 'two'"):
        mesh_mod.distributed_args(env=dict(env, JANUSFLOW_NUM_PROCESSES="two"))
    with pytest.raises(ConfigError, match="JANUSFLOW_PROCESS_ID: process id 2 is not in"):
        mesh_mod.distributed_args(env=dict(env, JANUSFLOW_PROCESS_ID="2"))
    with pytest.raises(ConfigError, match="set both"):
        mesh_mod.distributed_args(env={"JANUSFLOW_COORDINATOR": "h:1", "JANUSFLOW_NUM_PROCESSES": "2"})
