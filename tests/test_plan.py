"""Platforms (tpu_configs/*.py, apply_platform), compile-time plans (`janusflow plan`) and the
TPU launcher (tpu_configs/launch_tpu.sh --dry-run)."""

import dataclasses
import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from janusflow.configs.schema import ConfigError, MeshConfig
from janusflow.configs.loader import apply_overrides, load_config
from janusflow.data.mixing import with_task_ratios
from janusflow.perf.platforms import CHIPS, Platform, apply_platform, load_platform, parse_mesh

REPO = Path(__file__).resolve().parents[1]
PLATFORM_FILES = sorted(p for p in (REPO / "tpu_configs").glob("*.py"))
LAUNCH = REPO / "tpu_configs" / "launch_tpu.sh"
# the tiny preset cut to one block per tower: compile time is what these tests pay for
SMALL = ["model.llm.num_layers=1", "model.repa_layer=1", "model.siglip.num_layers=1"]


def _platform(**kw):
    base = dict(name="test-8", chip="v5p", devices=8, hosts=1, mesh=MeshConfig(data=1, fsdp=8, tensor=1),
                micro_batch=4, remat="block", dtype="bfloat16", env={})
    return Platform(**{**base, **kw})


def _tiny(und, gen, text):
    return apply_overrides(load_config("tiny"), [f"train.und_batch={und}", f"train.gen_batch={gen}",
                                                 f"train.text_batch={text}"])


# ----------------------------------------------------------------------------- apply_platform
def test_apply_platform_sets_mesh_accumulation_remat_dtype():
    cfg = _tiny(16, 32, 16)                                   # global 64
    out = apply_platform(cfg, _platform(micro_batch=4))        # 64 = 4 x 8 shards x 2
    t = out.train
    assert t.optim.accum_steps == 2
    assert (t.mesh.data, t.mesh.fsdp, t.mesh.tensor) == (1, 8, 1)
    assert (t.und_batch, t.gen_batch, t.text_batch) == (16, 32, 16)   # already multiples of 8 x 2
    assert out.model.remat == "block" and out.model.dtype == "bfloat16"
    assert cfg.model.remat == "none" and cfg.train.optim.accum_steps == 1   # input untouched

    # the tensor axis shards weights, not the batch: 4 batch shards -> accumulation 4
    out = apply_platform(cfg, _platform(mesh=MeshConfig(data=2, fsdp=2, tensor=2), micro_batch=4))
    assert out.train.optim.accum_steps == 4
    assert all(n % (4 * 4) == 0 for n in (out.train.und_batch, out.train.gen_batch, out.train.text_batch))


def test_apply_platform_rerounds_task_split_to_shard_multiples():
    # the 1.3B stage-2 split of 512 at 14:80:6 is 72:409:31; on 32 batch shards without
    # accumulation every task must be a multiple of 32: largest remainder over 16 units gives
    # 2:13:1 units (quotas 2.25, 12.78, 0.97) = 64:416:32
    cfg = with_task_ratios(load_config("experiments/janusflow_1_3b.py:stage=2"), (14, 80, 6), 512)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, task_batch_schedule=()))
    assert (cfg.train.und_batch, cfg.train.gen_batch, cfg.train.text_batch) == (72, 409, 31)
    out = apply_platform(cfg, _platform(devices=32, mesh=MeshConfig(data=1, fsdp=32), micro_batch=16))
    assert out.train.optim.accum_steps == 1
    assert (out.train.und_batch, out.train.gen_batch, out.train.text_batch) == (64, 416, 32)


def test_apply_platform_indivisible_batch_names_the_numbers():
    cfg = _tiny(20, 40, 0)                                     # global 60
    with pytest.raises(ConfigError, match=r"global batch 60 .*micro-batch 16 x 4 batch shards = 64"):
        apply_platform(cfg, _platform(devices=4, mesh=MeshConfig(data=1, fsdp=4), micro_batch=16))


def test_platform_validates_mesh_and_fields():
    with pytest.raises(ConfigError, match="16 slots, but the platform has 8 devices"):
        _platform(mesh=MeshConfig(data=2, fsdp=8))
    with pytest.raises(ConfigError, match="unknown chip"):
        _platform(chip="v9")
    with pytest.raises(ConfigError, match="do not split evenly over 3 hosts"):
        _platform(hosts=3)
    assert parse_mesh("data=2,fsdp=-1") == MeshConfig(data=2, fsdp=-1, tensor=1)
    with pytest.raises(ConfigError):
        parse_mesh("dp=2")


# one-GPU platforms are for fine-tuning (janusflow:finetune), not the paper's batch of 512
SINGLE_GPU = [p for p in PLATFORM_FILES if p.stem.startswith("gpu_1_")]


@pytest.mark.parametrize("path", [p for p in PLATFORM_FILES if p not in SINGLE_GPU], ids=lambda p: p.stem)
def test_platform_files_load_and_fit_the_paper_batch(path):
    p = load_platform(str(path))
    d, f, t = p.mesh_shape()
    assert d * f * t == p.devices
    assert p.chip in CHIPS and p.devices % p.hosts == 0
    assert all(isinstance(v, str) and v.startswith("--") for v in p.env.values())
    base = load_config("experiments/janusflow_1_3b.py:stage=2")
    cfg = apply_platform(base, p)
    tr, total = cfg.train, base.train.und_batch + base.train.gen_batch + base.train.text_batch
    assert tr.und_batch + tr.gen_batch + tr.text_batch == total
    assert p.micro_batch * p.batch_shards * tr.optim.accum_steps == total
    # the first 10k steps' 30:50:20 rows split over the same shards x accumulation
    unit = p.batch_shards * tr.optim.accum_steps
    assert all(n % unit == 0 for n in tr.task_batch_schedule[0][1:])


@pytest.mark.parametrize("path", SINGLE_GPU, ids=lambda p: p.stem)
def test_single_gpu_platforms_fit_a_finetune_batch(path):
    p = load_platform(str(path))
    assert p.devices == 1 and p.chip in CHIPS
    gb = int(path.stem.split("_")[-1][:-2])
    assert round(CHIPS[p.chip].hbm_bytes / 1e9) == gb
    base = load_config("experiments/janusflow_1_3b.py:stage=3")
    base = dataclasses.replace(base, train=dataclasses.replace(base.train, und_batch=0, gen_batch=8, text_batch=0,
                                                              task_batch_schedule=()))
    cfg = apply_platform(base, p)
    assert cfg.train.gen_batch == 8 and p.micro_batch * cfg.train.optim.accum_steps == 8


def test_named_platforms_have_the_documented_device_counts():
    counts = {p.stem: load_platform(str(p)).devices for p in PLATFORM_FILES}
    assert counts == {"v4_8": 4, "v5e_16": 16, "v5p_64": 32, "gpu_8": 8,
                      "gpu_1_24gb": 1, "gpu_1_40gb": 1, "gpu_1_80gb": 1}
    # v5p-64 counts TensorCores: 32 chips on 8 hosts; stage 3 (batch 256) needs micro-batch 8
    with pytest.raises(ConfigError, match="global batch 768"):
        apply_platform(load_config("experiments/janusflow_1_3b.py:stage=3"), load_platform("v5p_64"))
    p = load_platform("v5p_64:micro_batch=8,data=2,fsdp=16")
    assert (p.micro_batch, p.mesh_shape()) == (8, (2, 16, 1))
    assert apply_platform(load_config("experiments/janusflow_1_3b.py:stage=3"), p).train.optim.accum_steps == 3
    with pytest.raises(ConfigError, match="unknown key"):
        load_platform("v5p_64:microbatch=8")


def test_gpu_platform_xla_flags_parse_with_this_jaxlib():
    """An unknown flag in XLA_FLAGS aborts XLA at start-up; the GPU platform's flags must all
    be known to the installed jaxlib (the negative control is a MaxText flag it rejects)."""
    flags = load_platform("gpu_8").env["XLA_FLAGS"]
    code = "import jax, jax.numpy as jnp; jnp.ones(2).block_until_ready(); print('ok')"

    def run(xla_flags):
        env = {**os.environ, "XLA_FLAGS": xla_flags, "JAX_PLATFORMS": "cpu"}
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)

    ok = run(flags)
    assert ok.returncode == 0 and "ok" in ok.stdout, ok.stderr[-2000:]
    bad = run(flags + " --xla_gpu_pipeline_all_gather=on")
    assert bad.returncode != 0 and "Unknown flag" in bad.stderr


def test_train_cli_applies_platform(tmp_path, monkeypatch):
    """`janusflow train --platform` hands train() the platform's config and exports its env."""
    plat = tmp_path / "plat.py"
    plat.write_text(
        "from janusflow.configs.schema import MeshConfig\nfrom janusflow.perf.platforms import Platform\n"
        "def get_platform():\n"
        "    return Platform(name='t', chip='v4', devices=8, hosts=1, mesh=MeshConfig(data=2, fsdp=4),\n"
        "                    micro_batch=2, remat='dots', dtype='bfloat16',\n"
        "                    env={'JANUSFLOW_TEST_PLATFORM_FLAG': '--x=1'})\n")
    seen = {}
    import janusflow.train.loop as loop
    monkeypatch.setattr(loop, "train", lambda cfg, workdir, **kw: seen.update(cfg=cfg, workdir=workdir))
    monkeypatch.delenv("JANUSFLOW_TEST_PLATFORM_FLAG", raising=False)
    from janusflow.cli import main as cli
    rc = cli.main(["train", "--config", "tiny", "--set", "train.und_batch=16", "--set", "train.gen_batch=16",
                   "--platform", str(plat), "--workdir", str(tmp_path / "run")])
    assert rc == 0
    cfg = seen["cfg"]
    assert cfg.train.optim.accum_steps == 32 // (2 * 8) == 2
    assert (cfg.train.mesh.data, cfg.train.mesh.fsdp) == (2, 4) and cfg.model.remat == "dots"
    assert os.environ.get("JANUSFLOW_TEST_PLATFORM_FLAG") == "--x=1"
    monkeypatch.delenv("JANUSFLOW_TEST_PLATFORM_FLAG")


# ----------------------------------------------------------------------------- plan
def test_plan_time_estimate_arithmetic():
    from janusflow.perf.plan import PAPER_TOTAL_STEPS, time_estimate
    assert PAPER_TOTAL_STEPS == 10_000 + 390_000 + 26_000
    # 1 PFLOP per step on 10 x 100 TFLOP/s at 50%: 2 s/step; 43,200 steps = 1 day
    t = time_estimate(1e15, 10, 1e14, 0.5, 43_200)
    assert t["step_s"] == pytest.approx(2.0) and t["days"] == pytest.approx(1.0)
    with pytest.raises(ConfigError):
        time_estimate(1e15, 10, 1e14, 1.5, 1)


def test_abstract_batch_follows_the_pipeline_shapes():
    from janusflow.perf.plan import abstract_batch
    cfg = load_config("experiments/janusflow_1_3b.py:stage=2")
    b = abstract_batch(cfg)
    d, m = cfg.data, cfg.model
    und_len = 2 + m.num_und_tokens + d.und_text_len
    nu, ng, nt = cfg.train.und_batch, cfg.train.gen_batch, cfg.train.text_batch
    assert b["und"]["ids"].shape == (nu, und_len) and b["und"]["pixels"].shape == (nu, 384, 384, 3)
    assert "vae_images" not in b["und"]                          # only the gen-encoder ablations
    assert b["gen"]["prompt_ids"].shape == (ng, d.prompt_len)
    assert b["gen"]["repa_pixels"].shape == (ng, 384, 384, 3)
    assert b["text"]["ids"].shape == (nt, d.text_len)


def test_plan_fsdp_shards_the_arguments():
    """Per-device argument bytes: FSDP over 8 devices holds ~1/8 of the state, pure data
    parallelism a full replica (the pytest process has 8 simulated devices). Text examples
    only: the state is the whole model either way, and the image paths triple compile time."""
    from janusflow.perf.plan import compile_plan
    cfg = apply_overrides(load_config("tiny"), SMALL + ["train.und_batch=0", "train.gen_batch=0",
                                                        "train.text_batch=8"])
    mem = {}
    for name, mesh in (("data", MeshConfig(data=8)), ("fsdp", MeshConfig(data=1, fsdp=8))):
        c = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, mesh=mesh))
        r = compile_plan(c, log=lambda _m: None)
        assert r["devices"] == 8
        mem[name] = r["memory_per_device"]
    assert mem["fsdp"]["argument"] < mem["data"]["argument"] / 3
    assert mem["fsdp"]["state"] < mem["data"]["state"] / 3
    for m in mem.values():  # arguments = this device's state shard + batch shard
        assert m["argument"] == pytest.approx(m["state"] + m["batch"], rel=0.02)


def _plan(args, env=None, timeout=900):
    return subprocess.run([sys.executable, "-m", "janusflow.cli", "plan", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_plan_cli_tiny_on_8_simulated_devices(tmp_path):
    out = tmp_path / "plan.json"
    r = _plan(["--config", "tiny", *sum((["--set", s] for s in SMALL), []),
               "--set", "train.und_batch=8", "--set", "train.gen_batch=8", "--set", "train.text_batch=8",
               "--mesh", "data=2,fsdp=2,tensor=2", "--devices", "8", "--chip", "v5p", "--json", str(out)])
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["devices"] == 8 and res["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    m = res["memory_per_device"]
    assert m["argument"] > 0 and m["temp"] > 0 and m["total"] >= m["temp"]
    assert res["model_flops_per_step"] > 0 and res["xla_flops_per_step"] > 0
    # XLA counts the analytic matmuls plus norms, softmax, the optimizer ...: same order
    assert 0.5 < res["xla_flops_per_step"] / res["model_flops_per_step"] < 3
    t = res["time"]
    assert t["step_s"] == pytest.approx(res["model_flops_per_step"] / (8 * 459e12 * 0.5))
    assert "per-device memory" in r.stdout and "estimate of TPU/GPU memory" in r.stdout
    # examples and tokens per step beside the paper's
    assert "24 examples/step (und 8 x" in r.stdout and "x the paper's 512 x 4096" in r.stdout


def test_plan_refuses_a_wrong_device_count():
    # the child checks it really got the simulated devices it was started for
    env = {**os.environ, "JANUSFLOW_PLAN_CHILD": "1", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    r = _plan(["--config", "tiny", "--devices", "4", "--mesh", "data=4"], env=env, timeout=300)
    assert r.returncode == 1
    assert "needed 4 simulated CPU devices but jax has 2" in r.stderr
    # a mesh that cannot cover the devices fails in the parent, before any child starts
    r = _plan(["--config", "tiny", "--devices", "8", "--mesh", "data=3"], timeout=300)
    assert r.returncode == 2 and "8 devices" in r.stderr and "child" not in r.stdout


# ----------------------------------------------------------------------------- launcher
def _launch(*args):
    return subprocess.run(["bash", str(LAUNCH), *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_launch_script_parses():
    r = subprocess.run(["bash", "-n", str(LAUNCH)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_launch_dry_run_prints_all_worker_commands():
    r = _launch("--dry-run", "my-tpu", "us-east5-a", "my-proj", "tpu_configs/v5p_64.py",
                "experiments/janusflow_1_3b.py:stage=2", "gs://bkt/jf/stage2",
                "--set", "train.init_from=gs://bkt/jf/stage1", "--set", "train.log_every=50")
    assert r.returncode == 0, r.stderr
    gcloud = [ln for ln in r.stdout.splitlines() if ln.startswith("gcloud ")]
    assert len(gcloud) == 4                                   # scp, unpack, install, train
    assert all("--worker=all" in ln and "--zone=us-east5-a" in ln and "--project=my-proj" in ln
               for ln in gcloud)
    assert " scp " in gcloud[0] and "pip install" in gcloud[2]
    train = gcloud[-1]
    for part in ("janusflow.cli train", "--config experiments/janusflow_1_3b.py:stage=2",
                 "--platform tpu_configs/v5p_64.py", "--workdir gs://bkt/jf/stage2",
                 "--set train.init_from=gs://bkt/jf/stage1", "--set train.log_every=50",
                 "export LIBTPU_INIT_ARGS=", "--xla_tpu_enable_async_collective_fusion=true",
                 "export JANUSFLOW_DISTRIBUTED=1", "janusflow_logs/$(hostname).log"):
        assert part in train, part
    # one host: no jax.distributed start-up; --ref clones on the workers instead of copying
    r = _launch("--dry-run", "--ref", "v1.0", "--repo-url", "https://example.com/jf.git", "t", "z", "p",
                "tpu_configs/v4_8.py", "experiments/janusflow_1_3b.py:stage=1", "gs://b/s1")
    assert r.returncode == 0, r.stderr
    assert "JANUSFLOW_DISTRIBUTED" not in r.stdout and "TPU_MEGACORE=MEGACORE_DENSE" in r.stdout
    assert re.search(r"git clone https://example.com/jf.git .*checkout --force v1.0", r.stdout)


def test_launch_refuses_bad_arguments():
    r = _launch("--dry-run", "t", "z", "p", "tpu_configs/v4_8.py", "experiments/janusflow_1_3b.py", "/local/dir")
    assert r.returncode == 2 and "gs://" in r.stderr
    r = _launch("--dry-run", "t", "z", "p")
    assert r.returncode == 2 and "expected 6 arguments" in r.stderr
    r = _launch("--dry-run", "t", "z", "p", "tpu_configs/nope.py", "experiments/janusflow_1_3b.py", "gs://b/x")
    assert r.returncode == 2 and "no platform file" in r.stderr


# ----------------------------------------------------------------------------- TPU compiler
def test_choose_compiler_falls_back_in_one_line(monkeypatch):
    import janusflow.perf.tpu_topology as tt
    from janusflow.perf.plan import choose_compiler
    v4 = load_platform("v4_8")
    lines = []
    monkeypatch.setattr(tt, "libtpu_version", lambda: None)
    assert choose_compiler("auto", v4, log=lines.append) == "cpu"
    assert lines == ["janusflow plan: libtpu is not installed (pip install 'janusflow[tpu]'): "
                     "falling back to the XLA:CPU estimate"]
    with pytest.raises(ConfigError, match="--compiler tpu: libtpu is not installed"):
        choose_compiler("tpu", v4)
    monkeypatch.setattr(tt, "libtpu_version", lambda: "0.0.0")
    assert choose_compiler(None, v4) == "tpu" and choose_compiler("cpu", v4) == "cpu"
    lines.clear()
    assert choose_compiler("auto", load_platform("gpu_8"), log=lines.append) == "cpu"
    assert len(lines) == 1 and "names no TPU topology" in lines[0]
    with pytest.raises(ConfigError, match="--compiler"):
        choose_compiler("gpu", v4)


def test_platform_topology_must_match_the_devices():
    assert load_platform("v5e_16").topology == "v5e:4x4"
    assert load_platform("v5p_64").chips_per_host_bounds == (2, 2, 1)
    with pytest.raises(ConfigError, match="Platform.topology"):
        _platform(topology="v5p:2x2x1")                      # 4 chips, the platform has 8
    with pytest.raises(ConfigError, match="Platform.topology"):
        _platform(topology="v5p")


@pytest.mark.slow
def test_plan_cli_compiles_tiny_with_the_tpu_compiler_for_v4_8(tmp_path):
    """The TPU compiler itself (libtpu, compile-only devices of the v4:2x2x1 topology) plans
    the tiny step; 1-2 min of compile here."""
    from janusflow.perf.tpu_topology import libtpu_version
    if libtpu_version() is None:
        pytest.skip("libtpu is not installed (pip install -e '.[tpu]'): the TPU-compiled plan is untested here")
    out = tmp_path / "plan.json"
    r = _plan(["--config", "tiny", *sum((["--set", s] for s in SMALL), []),
               "--set", "train.und_batch=8", "--set", "train.gen_batch=8", "--set", "train.text_batch=8",
               "--platform", "v4_8:micro_batch=6", "--compiler", "tpu", "--json", str(out)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "TPU compiler buffer assignment" in r.stdout and "falling back" not in r.stdout
    res = json.loads(out.read_text())
    assert (res["compiler"], res["device_kind"], res["devices"], res["topology"]) == ("tpu", "TPU v4", 4, "v4:2x2x1")
    m = res["memory_per_device"]
    # the TPU's tiled layouts pad the tiny model's small arrays: arguments >= the raw shards
    assert m["temp"] > 0 and m["argument"] >= m["state"] + m["batch"]


@pytest.mark.slow
def test_plan_cli_compiles_splash_attention_into_mosaic_kernels_for_v4_8(tmp_path):
    """attention_impl=splash in the TPU-compiled train step: the Pallas kernels are in the
    program as Mosaic custom calls (forward and backward, LLM and SigLIP); xla has none."""
    from janusflow.perf.tpu_topology import libtpu_version
    if libtpu_version() is None:
        pytest.skip("libtpu is not installed (pip install -e '.[tpu]'): the splash plan is untested here")
    counts = {}
    for impl in ("xla", "splash"):
        out = tmp_path / f"{impl}.json"
        r = _plan(["--config", "tiny", *sum((["--set", s] for s in SMALL), []),
                   "--set", "train.und_batch=8", "--set", "train.gen_batch=8", "--set", "train.text_batch=8",
                   "--set", f"model.attention_impl={impl}",
                   "--platform", "v4_8:micro_batch=6", "--compiler", "tpu", "--json", str(out)])
        assert r.returncode == 0, r.stderr[-3000:]
        res = json.loads(out.read_text())
        assert res["attention_impl"] == impl
        counts[impl] = res["mosaic_kernels"]
    assert counts["xla"] == 0 and counts["splash"] > 0, counts


# ----------------------------------------------------------------------------- FLOPs by depth
@pytest.mark.slow   # compiles five depth probes and the unrolled step: minutes on 2 cores
def test_flops_by_depth_matches_the_unrolled_count():
    """A scanned step's XLA FLOPs, extrapolated from unrolled 1-2 layer probes, equal XLA's count
    of the same step compiled unrolled at full depth (3 LLM layers x 3 SigLIP blocks, remat so
    the recomputation is in both); the analytic count extrapolates exactly."""
    from janusflow.perf.depth_flops import depth_flops
    from janusflow.perf.plan import compile_plan
    cfg = apply_overrides(load_config("tiny"), [
        "model.llm.num_layers=3", "model.repa_layer=2", "model.siglip.num_layers=3",
        "model.remat=save_dot_except_mlp", "train.und_batch=8", "train.gen_batch=8", "train.text_batch=8"])
    # one device: the count is per step, and five 8-way partitioned compiles cost minutes
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, mesh=MeshConfig(data=1)))
    plan = functools.partial(compile_plan, log=lambda _m: None, devices=jax.devices()[:1])
    unrolled = plan(cfg)
    scanned_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, scan_layers=True))
    scanned = plan(scanned_cfg)
    # the scan hides layers from XLA's count: this is what the probes are for
    assert scanned["xla_flops_per_step"] < 0.9 * unrolled["xla_flops_per_step"]
    d = depth_flops(scanned_cfg, plan, scanned["model_flops_breakdown"], log=lambda _m: None)
    assert set(d["probes"]) == {"base", "llm", "siglip"}
    assert d["model_flops_per_step_extrapolated"] == pytest.approx(unrolled["model_flops_per_step"], rel=1e-9)
    assert d["xla_flops_per_step"] == pytest.approx(unrolled["xla_flops_per_step"], rel=0.01)
    assert d["ratio"] == pytest.approx(unrolled["xla_flops_per_step"] / unrolled["model_flops_per_step"], rel=0.01)
