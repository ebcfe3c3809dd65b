"""Cloud-storage workdirs (``gs://``) and process-0-only writes for ``janusflow train``.

There is no network here, so ``gs://`` is routed to a local directory at the two places where
bytes leave the process, and nowhere else:
  * ``etils.epath`` (our code, orbax's metadata/commit files): ``epath.testing.mock_epath``
    with every backend function rewriting ``gs://X`` to ``<tmp>/gcs/X``;
  * tensorstore (orbax's array data): orbax's ``gcs_utils.get_kvstore_for_gcs`` returns a
    ``file`` kvstore at the same local place instead of the ``gcs`` one.
Orbax still takes its GCS code paths (commit_success.txt instead of renames, GCS deleter);
its hierarchical-namespace probe (a google-cloud-storage call) answers "no". Everything our
code does with the path -- joins, probes, JSON, metrics, model dirs, resume -- is real.
"""

import dataclasses
import importlib.util
import json
import os

import jax
import numpy as np
import pytest
from etils import epath
from flax import nnx

from janusflow import paths
from janusflow.configs import presets
from janusflow.checkpoint import manager, model_io
from janusflow.configs.schema import ConfigError, ExperimentConfig, MeshConfig, OptimConfig, TrainConfig
from janusflow.parallel.mesh import make_mesh
from janusflow.train import loop

URL = "gs://bucket/run"


def _model():
    # tiny, cut further (1 LLM layer, no SigLIP) to keep the one compile of this file short
    t = presets.tiny()
    return presets.tiny(repa=False, und_encoder="none", repa_layer=1, llm=dataclasses.replace(t.llm, num_layers=1),
                        gen_codec=dataclasses.replace(t.gen_codec, num_blocks=1))


def _cfg(**train_kw):
    # the same one-device gen-only run in every test: the train step compiles once
    base = dict(stage=2, steps=4, und_batch=0, gen_batch=2, text_batch=0, log_every=1, ckpt_every=2,
                optim=OptimConfig(lr=1e-3, warmup_steps=2), mesh=MeshConfig(data=1))
    base.update(train_kw)
    return ExperimentConfig(name="urls", model=_model(), seq_len=256, train=TrainConfig(**base),
                            synthetic_data=True)


def _train(cfg, workdir, **kw):
    return loop.train(cfg, workdir, devices=jax.devices()[:1], **kw)


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """Local directory that stands for ``gs://``; ``gs://bucket/x`` lives at ``<it>/bucket/x``."""
    from orbax.checkpoint._src.path import gcs_utils
    root = str(tmp_path / "gcs")
    os.makedirs(root)

    def local(p):
        s = os.fspath(p)
        return os.path.join(root, s[len("gs://"):]) if s.startswith("gs://") else s

    def to_url(p, like):
        return "gs://" + os.path.relpath(p, root) if os.fspath(like).startswith("gs://") else p

    def one(orig, path, *a, **k):
        return orig(local(path), *a, **k)

    def two(orig, path, dst, *a, **k):
        return orig(local(path), local(dst), *a, **k)

    def glob(orig, pattern):
        return [to_url(p, pattern) for p in orig(local(pattern))]

    def walk(orig, top, **k):
        for d, dirs, files in orig(local(top), **k):
            yield to_url(d, top), dirs, files

    monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs", lambda p: {"driver": "file", "path": local(p)})
    monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda p: False)
    monkeypatch.setattr(manager, "missing_gcs_packages", lambda: [])  # the mock needs no gcsfs
    # the process's own directory: a mangled URL (e.g. "gs:/bucket/...") would land here
    monkeypatch.chdir(tmp_path)
    with epath.testing.mock_epath(open=one, exists=one, isdir=one, listdir=one, makedirs=one, mkdir=one,
                                  remove=one, rmtree=one, stat=one, rename=two, replace=two, copy=two,
                                  glob=glob, walk=walk):
        yield root
    assert not os.path.exists(tmp_path / "gs:"), "a gs:// path was mangled into a local one"


class _Jax:
    """``jax`` as loop.py / model_io.py see it: another process index, and a ``device_get``
    that refuses anything but scalars (the state must go to orbax as sharded arrays)."""

    def __init__(self, index):
        self._index = index

    def __getattr__(self, name):
        return getattr(jax, name)

    def process_index(self, *a):
        return self._index

    def device_get(self, tree):
        big = [x.shape for x in jax.tree.leaves(tree) if np.ndim(x) > 0]
        assert not big, f"device_get of non-scalar arrays {big[:3]}"
        return jax.device_get(tree)


def _as_process(monkeypatch, index):
    for mod in (loop, model_io):
        monkeypatch.setattr(mod, "jax", _Jax(index))


def _params(path):
    model, _ = model_io.load_model(path)
    return jax.device_get(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def test_paths_keep_urls_and_make_local_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(paths.as_path("gs://b/run")) == "gs://b/run"
    assert str(paths.as_path("gs://b/run/")) == "gs://b/run"
    assert str(paths.as_path("runs/x")) == str(tmp_path / "runs" / "x")
    assert paths.join("gs://b/run", "checkpoints", "2") == "gs://b/run/checkpoints/2"
    assert paths.join("runs/x", "model") == os.path.join("runs/x", "model")
    assert paths.is_local("/a/b") and paths.is_local("rel") and not paths.is_local("gs://b")
    with pytest.raises(ValueError, match="'file://'"):
        paths.is_local("file:///tmp/x")
    assert str(paths.as_path(paths.join("gs://b/x", "checkpoints"))) == "gs://b/x/checkpoints"


def test_check_workdir_on_a_bucket_probes_without_disk_usage(bucket, tmp_path, monkeypatch):
    def no_disk_usage(p):
        raise AssertionError(f"disk_usage({p}) on a bucket")
    monkeypatch.setattr(manager.shutil, "disk_usage", no_disk_usage)
    manager.check_workdir("gs://bucket/w", min_free_bytes=1 << 60)
    assert os.listdir(os.path.join(bucket, "bucket", "w")) == []  # created; probe removed
    ck = manager.Checkpointer("gs://bucket/w/checkpoints")  # was os.path.abspath'ed: /cwd/gs:/...
    assert str(ck.directory) == "gs://bucket/w/checkpoints" and ck.steps() == []
    ck.close()
    monkeypatch.undo()  # a local workdir still gets the free-space check
    with pytest.raises(OSError, match="free"):
        manager.check_workdir(str(tmp_path / "local"), min_free_bytes=1 << 60)


def test_gs_workdir_names_missing_client_packages(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gcsfs" else real(name, *a))
    assert "gcsfs" in manager.missing_gcs_packages()
    with pytest.raises(ImportError, match="pip install .*gcsfs"):
        manager.check_workdir("gs://bucket/w")


def test_train_resume_warm_start_and_final_model_in_a_bucket(bucket, tmp_path, monkeypatch):
    _as_process(monkeypatch, 0)
    cfg = _cfg()
    run = os.path.join(bucket, "bucket", "run")
    logs = []
    _train(cfg, URL, stop_at=2, log=logs.append)
    assert os.path.isdir(os.path.join(run, "checkpoints", "2", "state"))
    assert [json.loads(x)["step"] for x in open(os.path.join(run, "metrics.jsonl"))] == [1, 2]
    assert json.load(open(os.path.join(run, "run_info.json")))["devices"] == jax.device_count()
    assert any("is not local" in line for line in logs)  # the TensorBoard/JSONL staging is said

    _train(cfg, URL, log=logs.append)  # resumes from the bucket and finishes
    assert any(f"resumed from step 2 in {URL}" == line for line in logs)
    assert sorted(int(s) for s in os.listdir(os.path.join(run, "checkpoints")) if s.isdigit()) == [2, 4]
    assert [json.loads(x)["step"] for x in open(os.path.join(run, "metrics.jsonl"))] == [1, 2, 3, 4]
    assert [f for f in os.listdir(os.path.join(run, "tensorboard")) if "tfevents" in f]
    for name in ("model", "model_ema"):
        assert sorted(os.listdir(os.path.join(run, name))) == ["janusflow_config.json", "params"]
    assert f"saved {URL}/model" in logs

    # the bucket run (stopped + resumed) equals an uninterrupted local run bit for bit
    _train(cfg, str(tmp_path / "local"), log=lambda *_: None)
    jax.tree.map(np.testing.assert_array_equal, _params(f"{URL}/model"), _params(str(tmp_path / "local" / "model")))

    assert model_io.is_model_dir(f"{URL}/model") and not model_io.is_model_dir(f"{URL}/nothing")
    model, mcfg = model_io.load_model(f"{URL}/model")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        model_io.save_model(f"{URL}/model", model, mcfg)
    assert model_io.save_model(f"{URL}/copy", model, mcfg) == f"{URL}/copy"
    jax.tree.map(np.testing.assert_array_equal, _params(f"{URL}/copy"), _params(f"{URL}/model"))
    with pytest.raises(FileNotFoundError, match="local disk only"):
        model_io.load_model(f"{URL}/checkpoints")

    # the next stage starts from the bucket workdir's final model
    nxt = _cfg(init_from=URL)
    wlogs = []
    from janusflow.train.vae_source import initial_vae
    parts, state, _ = loop._warm_start(nxt, make_mesh(nxt.train.mesh, devices=jax.devices()[:1]),
                                       initial_vae(nxt, wlogs.append), wlogs.append)
    assert wlogs == [f"warm start from {URL}/model"]
    started = loop.merge_model(parts, state.params, state.frozen)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(nnx.to_pure_dict(nnx.state(started, nnx.Param))),
                 _params(f"{URL}/model"))


def test_only_process_0_writes_json_metrics_and_configs(tmp_path, monkeypatch):
    _as_process(monkeypatch, 1)
    work = tmp_path / "w"
    _train(_cfg(), str(work), log=lambda *_: None)
    written = sorted(os.listdir(work))
    # orbax's own files are orbax's business (its primary-host logic is not patched here)
    assert written == ["checkpoints", "model", "model_ema"], written
    for name in ("model", "model_ema"):
        assert os.listdir(work / name) == ["params"]  # no janusflow_config.json from process 1


def test_recipe_refuses_a_cloud_workdir_before_any_work():
    from janusflow.train import recipe
    cfg = dataclasses.replace(_cfg(), recipe=dataclasses.replace(_cfg().recipe, enabled=True))
    with pytest.raises(ConfigError, match="local workdir"):
        recipe.run(cfg, "gs://bucket/recipe", log=lambda *_: None)


def test_lock_on_a_bucket_refuses_a_live_holder_and_takes_over_a_dead_one(bucket):
    import socket
    import subprocess
    import sys

    from janusflow.train.workdir import WorkdirInUseError, WorkdirLock
    lock = os.path.join(bucket, "bucket", "held", "janusflow.lock")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    logs = []
    with WorkdirLock("gs://bucket/held", logs.append):
        assert json.load(open(lock))["pid"] == os.getpid()
        with pytest.raises(WorkdirInUseError, match=f"pid {os.getpid()} on host {socket.gethostname()}"):
            WorkdirLock("gs://bucket/held").__enter__()   # a live holder on this host
    assert not os.path.exists(lock) and logs == []
    with open(lock, "w") as f:   # left by a killed run on this host
        json.dump({"pid": dead.pid, "host": socket.gethostname(), "started": "then"}, f)
    with WorkdirLock("gs://bucket/held", logs.append):
        assert json.load(open(lock))["pid"] == os.getpid()
    assert len(logs) == 1 and f"pid {dead.pid}" in logs[0] and "is gone" in logs[0]
    with open(lock, "w") as f:   # another host: its liveness cannot be checked from here
        json.dump({"pid": dead.pid, "host": "elsewhere", "started": "then"}, f)
    with pytest.raises(WorkdirInUseError, match="on host elsewhere.*if that run has ended, delete gs://bucket/held/janusflow.lock"):
        WorkdirLock("gs://bucket/held").__enter__()
