"""Local paths vs cloud URLs (janusflow/paths.py) and the metrics writer on a gs:// workdir.

There is no network here, so gs:// is routed to a local directory with etils' own mock of the
epath backends: what is tested is that our code sends every workdir write through epath
(nothing is written at a mangled local path like ``<cwd>/gs:/...``) and stages, copies and
resumes the metrics file as documented. orbax/tensorstore's own GCS access is not tested."""

import builtins
import json
import os
import shutil

import pytest
from etils import epath
from etils.epath import testing as epath_testing

from janusflow import paths
from janusflow.checkpoint import manager
from janusflow.train.metrics import MetricsWriter


def test_scheme_join_and_as_path():
    assert paths.scheme("gs://b/run") == "gs" and paths.scheme("runs/x") is None
    assert paths.is_local("/tmp/x") and not paths.is_local("gs://b/x")
    assert paths.join("gs://b/run", "checkpoints") == "gs://b/run/checkpoints"
    assert paths.join("runs/x", "model") == os.path.join("runs/x", "model")
    assert os.fspath(paths.as_path("gs://b/run")) == "gs://b/run"          # not <cwd>/gs:/b/run
    assert os.fspath(paths.as_path("rel/dir")) == os.path.abspath("rel/dir")
    with pytest.raises(ValueError, match="unsupported URL scheme 'http://'"):
        paths.scheme("http://example.com/run")


def test_gs_workdir_without_the_gcs_packages_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(manager, "missing_gcs_packages", lambda: ["gcsfs"])
    with pytest.raises(ImportError, match=r"gs://b/run.*needs gcsfs \(pip install gcsfs\)"):
        manager.check_workdir("gs://b/run")


@pytest.fixture
def fake_gcs(tmp_path):
    """gs://BUCKET/... -> tmp_path/BUCKET/... for every epath operation."""
    root = tmp_path / "gcs"

    def tr(p):
        p = os.fspath(p)
        assert p.startswith("gs://"), f"a non-gs path reached the gs backend: {p}"
        return str(root / p[len("gs://"):])

    def _open(orig, path, mode="r", **kw):
        if any(c in mode for c in "wax"):   # object stores have no directories to create first
            os.makedirs(os.path.dirname(tr(path)), exist_ok=True)
        return builtins.open(tr(path), mode)

    mocks = dict(
        open=_open,
        exists=lambda orig, p: os.path.exists(tr(p)),
        isdir=lambda orig, p: os.path.isdir(tr(p)),
        listdir=lambda orig, p: os.listdir(tr(p)),
        makedirs=lambda orig, p, exist_ok=False, **kw: os.makedirs(tr(p), exist_ok=exist_ok),
        mkdir=lambda orig, p, **kw: os.mkdir(tr(p)),
        remove=lambda orig, p: os.remove(tr(p)),
        rmtree=lambda orig, p: shutil.rmtree(tr(p)),
    )
    with epath_testing.mock_epath(**mocks):
        yield root


def test_metrics_on_a_gs_workdir_are_staged_copied_and_resumed(fake_gcs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # a mangled URL would show up as tmp_path/gs:/...
    logs = []
    w = MetricsWriter("gs://bucket/run", sync_every_s=3600, log=logs.append)
    assert any("is not local" in line for line in logs)
    w.write(1, {"loss": 1.5})
    w.write_json("run_info.json", {"devices": 8})
    assert json.loads((fake_gcs / "bucket/run/run_info.json").read_text()) == {"devices": 8}
    assert not (fake_gcs / "bucket/run/metrics.jsonl").exists()     # staged until a sync
    assert w.sync()
    assert (fake_gcs / "bucket/run/metrics.jsonl").read_text().count("\n") == 1
    w.close()
    # a resumed run continues the bucket's record instead of replacing it
    w2 = MetricsWriter("gs://bucket/run", sync_every_s=3600, log=lambda *_: None)
    w2.write(2, {"loss": 1.2})
    w2.close()
    lines = [json.loads(line) for line in (fake_gcs / "bucket/run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    assert not os.path.exists(tmp_path / "gs:"), "a gs:// path was written as a local path"
    # the local-workdir path writes in place, no staging
    local = tmp_path / "local_run"
    local.mkdir()
    w3 = MetricsWriter(str(local), log=logs.append)
    w3.write(1, {"loss": 0.5})
    w3.close()
    assert (local / "metrics.jsonl").read_text().count("\n") == 1


def test_check_workdir_probes_a_gs_workdir_through_epath(fake_gcs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(manager, "missing_gcs_packages", lambda: [])
    manager.check_workdir("gs://bucket/new_run")       # creates it, writes and removes a probe
    assert (fake_gcs / "bucket/new_run").is_dir() and os.listdir(fake_gcs / "bucket/new_run") == []
    assert not os.path.exists(tmp_path / "gs:")
    assert isinstance(paths.as_path("gs://bucket/new_run"), epath.Path)
