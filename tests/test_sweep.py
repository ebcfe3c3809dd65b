"""The ablation sweep (experiments/ablations.py) and ``janusflow sweep``."""

import dataclasses
import json
import os
import shlex

import pytest

from janusflow.train import sweep
from janusflow.cli.main import main
from janusflow.configs.schema import ConfigError
from janusflow.configs.loader import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABL = os.path.join(ROOT, "experiments", "ablations.py")


def _flat(obj, prefix=""):
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out.update(_flat(v, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = v
    return out


def _diff(a, b):
    fa, fb = _flat(a), _flat(b)
    return {k for k in fa if fa[k] != fb[k]} - {"name"}


TINY_EXPECTED = {
    "A": {"model.repa"},
    "B": {"model.und_encoder"},
    "C": {"model.und_encoder"},
    "D": {"model.gen_enabled", "recipe.stage_ratios"},
    "E": {"model.und_encoder", "recipe.stage_ratios"},
    "F": set(),
    # the Janus-Pro family: its model (VQ tokenizer, no REPA, the official <begin_of_image> slot)
    # and its recipe's VQ phase and official CFG weight
    "AR": {"model.gen_head", "model.repa", "model.beg_of_und_embed", "model.vq.base_channels",
           "model.vq.channel_mult", "model.vq.codebook_size", "model.vq.norm_groups", "model.vq.num_res_blocks",
           "model.vq.z_channels", "recipe.cfg_weight", "recipe.vq_steps", "recipe.vq_batch", "recipe.vq_lr"},
    "repa_layer_1": {"model.repa_layer"},
    "repa_layer_3": {"model.repa_layer"},
    "repa_weight_0.25": {"train.loss.repa_weight"},
    "repa_weight_0.5": {"train.loss.repa_weight"},
    "t_uniform": {"train.loss.t_sampling"},
    "t_mean_0.0": {"train.loss.t_mean"},
}


@pytest.mark.parametrize("scale", ["", "short", "paper"])
def test_each_member_differs_from_F_only_in_what_it_ablates(scale):
    path, members = sweep.load_members(ABL + (f":{scale}" if scale else ""))
    if scale == "paper":
        assert len(members) == 12
    else:
        assert [m["name"] for m in members] == list(TINY_EXPECTED)
    f_cfg = load_config(f"{path}:{next(m['arg'] for m in members if m['name'] == 'F')}")
    batch_keys = {"train.und_batch", "train.gen_batch", "train.text_batch"}
    for m in members:
        cfg = load_config(f"{path}:{m['arg']}")
        diff = _diff(f_cfg, cfg)
        expected = TINY_EXPECTED.get(m["name"])
        if scale == "paper":   # no recipe: the ablated task's share of the batch goes to the others
            if m["name"].startswith("repa_layer"):
                expected = {"model.repa_layer"}
            elif m["name"].startswith("t_mean"):   # paper F is LN(0, 1), so its knob is -0.5
                expected = {"train.loss.t_mean"}
            else:
                expected = {k.replace("recipe.stage_ratios", "BATCH") for k in expected}
                if "BATCH" in expected:
                    expected = (expected - {"BATCH"}) | batch_keys
        assert diff == expected, (m["name"], diff)
    # the member's value, not just the key, is what it says
    assert load_config(f"{path}:repa_weight=0.25").train.loss.repa_weight == 0.25
    d = load_config(f"{path}:D" + (f",{scale}" if scale else ""))
    if scale == "paper":
        assert d.train.gen_batch == 0 and d.train.und_batch + d.train.text_batch == 512
    else:
        assert d.recipe.stage_ratios[1::3] == (0, 0, 0) and d.recipe.stage_ratios[0::3] == (50, 14, 21)


def test_F_is_the_default_run():
    f_cfg = load_config(f"{ABL}:F")
    default = load_config(os.path.join(ROOT, "experiments", "shapes_tiny.py"))
    assert _diff(default, f_cfg) == {"recipe.eval_untrained"}
    paper = load_config(f"{ABL}:F,paper")
    assert paper.model.image_size == 256 and paper.model.num_gen_tokens == paper.model.siglip.num_patches == 256
    assert paper.train.steps == 50_000 and paper.train.stage == 2
    assert paper.train.und_batch + paper.train.gen_batch + paper.train.text_batch == 512


def test_bad_member_names_the_problem():
    with pytest.raises(ConfigError, match="unknown member 'Z'"):
        load_config(f"{ABL}:Z")
    with pytest.raises(ConfigError, match="repa_layer"):
        load_config(f"{ABL}:repa_layer=x")
    with pytest.raises(ConfigError, match="unknown knob"):
        load_config(f"{ABL}:foo=1")


def test_print_emits_one_launch_command_per_member_seed(capsys):
    assert main(["sweep", "--config", ABL, "--workdir", "gs://bucket/abl", "--print", "--seeds", "2",
                 "--set", "train.seed=3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    _, members = sweep.load_members(ABL)
    assert len(lines) == 2 * len(members)
    for i, line in enumerate(lines):   # seed by seed: every member's seed 0 first
        s, m = divmod(i, len(members))
        argv = shlex.split(line)
        assert argv[:4] == ["janusflow", "train", "--config", f"{ABL}:{members[m]['arg']}"]
        assert argv[argv.index("--workdir") + 1] == f"gs://bucket/abl/{members[m]['name']}/seed{s}"
        # the seed is added to the member's own seeds (the user's --set train.seed=3 included)
        assert argv[-6:] == ["--set", "train.seed=3", "--set", f"train.seed={3 + s}", "--set", f"data.seed={s}"]
    assert main(["sweep", "--config", f"{ABL}:paper", "--workdir", "gs://b/x", "--print", "--only", "A,F",
                 "--launcher", "tpu_configs/launch_tpu.sh tpu1 us-east5-a proj tpu_configs/v5p_64.py"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [shlex.split(x)[5:7] for x in lines] == [[f"{ABL}:A,paper", "gs://b/x/A/seed0"],
                                                    [f"{ABL}:F,paper", "gs://b/x/F/seed0"]]
    assert all(x.startswith("tpu_configs/launch_tpu.sh tpu1 ") for x in lines)


def test_seeds_change_the_config_and_its_fingerprint():
    path, members = sweep.load_members(ABL)
    runs = sweep.plan_runs(path, [m for m in members if m["name"] in ("A", "F")], [], 2)
    assert [r.name for r in runs] == ["A/seed0", "F/seed0", "A/seed1", "F/seed1"]
    assert runs[2].seeds == {"train": 1, "data": 1} and len({r.sha for r in runs}) == 4
    again = sweep.plan_runs(path, [m for m in members if m["name"] == "A"], [], 1)
    assert again[0].sha == runs[0].sha   # deterministic: a re-run finds its records
    with pytest.raises(ConfigError, match="--seeds must be >= 1"):
        sweep.plan_runs(path, members, [], 0)


def test_only_rejects_unknown_members(capsys):
    assert main(["sweep", "--config", ABL, "--workdir", "/tmp/x", "--print", "--only", "A,Q"]) == 2
    assert "unknown member(s) ['Q']" in capsys.readouterr().err


# A tiny single-stage experiment (synthetic data, one device); member "bad" fails when it trains.
TINY_EXP = """
from janusflow.configs import presets
from janusflow.configs.schema import ExperimentConfig, MeshConfig, OptimConfig, TrainConfig
def sweep(arg=None):
    return [{"name": n, "arg": n, "what": n} for n in ("bad", "ok", "half", "A", "F")[:NMEMBERS]]
def get_config(arg=None):
    train = TrainConfig(stage=2, steps=3, und_batch=0, gen_batch=2, text_batch=0, log_every=1, ckpt_every=3,
                        optim=OptimConfig(lr=1e-3, warmup_steps=1), mesh=MeshConfig(data=1),
                        init_from="/nonexistent/model" if arg == "bad" else "")
    return ExperimentConfig(name="t_" + arg, model=presets.tiny(repa=arg == "F"), seq_len=256, train=train,
                            synthetic_data=True)
"""


def _tiny_exp(tmp_path, n):
    exp = tmp_path / "exp.py"
    exp.write_text(f"NMEMBERS = {n}\n" + TINY_EXP)
    return sweep.load_members(str(exp))


def test_failing_member_does_not_stop_the_sweep_and_finished_runs_are_not_rerun(tmp_path, monkeypatch):
    from janusflow.train import sweep_results
    monkeypatch.setenv("XLA_FLAGS", "")   # the runs are processes of their own, on one device
    path, members = _tiny_exp(tmp_path, 4)
    runs = sweep.plan_runs(path, members, [], 1)
    work, results = tmp_path / "w", str(tmp_path / "res.jsonl")
    ok = runs[1]   # recorded by an earlier session: skipped, never trained
    sweep_results.append_record(results, sweep_results.run_record(str(tmp_path / "none"), spec=path, member=ok.member,
                                seed=0, seeds=ok.seeds, overrides=[], sha=ok.sha, minutes=1.0))
    half = work / "half" / "seed0"   # trained to the end but killed before its record was written
    assert sweep_results.claim_run_dir(str(half), {"config_sha": runs[2].sha}) is None
    os.makedirs(half / "model")
    foreign = work / "A" / "seed0"   # not made by the sweep: refused, nothing touched
    os.makedirs(foreign / "model")
    (foreign / "notes.txt").write_text("mine")
    (half / "metrics.jsonl").write_text(json.dumps({"step": 3, "loss_rf": 0.5, "loss_ar": 0.0}) + "\n")
    logs = []
    status = sweep.run(path, runs, str(work), results, log=logs.append)
    assert status["ok/seed0"] == "done" and status["half/seed0"] == "done"
    assert status["bad/seed0"].startswith("failed (exit ")
    assert "/nonexistent/model" in (work / "bad.seed0.log").read_text()
    assert any("ok/seed0: recorded in" in line and "already, skipped" in line for line in logs)
    assert not (work / "ok").exists()
    recs = sweep_results.read_records(results)
    assert [(r["member"], r["seed"]) for r in recs] == [("ok", 0), ("half", 0)]
    assert recs[1]["metrics"]["loss.rf"] == 0.5 and recs[1]["config_sha"] == runs[2].sha
    assert not half.exists()               # recorded, so its directory is gone
    assert (work / "bad" / "seed0").is_dir()   # a failed run keeps its directory (it resumes from there)
    assert status["A/seed0"].startswith(f"refused ({foreign} exists and was not made by janusflow sweep")
    assert sorted(os.listdir(foreign)) == ["model", "notes.txt"] and not (work / "A.seed0.log").exists()


def test_a_second_sweep_on_the_same_workdir_is_refused(tmp_path):
    from janusflow.train.workdir import WorkdirInUseError, WorkdirLock
    path, members = _tiny_exp(tmp_path, 2)
    runs = sweep.plan_runs(path, members, [], 1)
    work = tmp_path / "w"
    with WorkdirLock(str(work)):   # the first sweep, still running
        with pytest.raises(WorkdirInUseError, match=f"workdir {work} is in use by another run \\(pid {os.getpid()}"):
            sweep.run(path, runs, str(work), str(tmp_path / "r.jsonl"), log=lambda *_: None)
        assert sorted(os.listdir(work)) == ["janusflow.lock"]   # no member started, no log file


@pytest.mark.slow
def test_a_real_sweep_of_two_members_and_two_seeds(tmp_path, monkeypatch, capsys):
    """2 members x 2 seeds x 3 steps through the CLI; then the same command again records nothing new."""
    from janusflow.train import sweep_results
    monkeypatch.setenv("XLA_FLAGS", "")
    exp = tmp_path / "exp.py"
    exp.write_text("NMEMBERS = 5\n" + TINY_EXP.replace('("bad", "ok", "half", "A", "F")', '("A", "F")'))
    results = str(tmp_path / "study.jsonl")
    argv = ["sweep", "--config", str(exp), "--workdir", str(tmp_path / "w"), "--seeds", "2", "--results", results]
    assert main(argv) == 0
    recs = sweep_results.read_records(results)
    assert [(r["member"], r["seed"]) for r in recs] == [("A", 0), ("F", 0), ("A", 1), ("F", 1)]
    # run directories (and the member folders holding them) removed; the logs stay
    assert sorted(os.listdir(tmp_path / "w")) == ["A.seed0.log", "A.seed1.log", "F.seed0.log", "F.seed1.log"]
    rf = {(r["member"], r["seed"]): r["metrics"]["loss.rf"] for r in recs}
    assert rf[("A", 0)] != rf[("A", 1)]   # the seed reaches the init and the draws
    assert recs[0]["metrics"]["loss.repa"] is None and recs[1]["metrics"]["loss.repa"] < 0   # A has no REPA
    assert all(len(r["curves"]["loss_rf"][0]) == 3 for r in recs)
    out = capsys.readouterr().out
    assert "| A | A | 2 |" in out and os.path.isfile(str(tmp_path / "study_members.png"))
    summary = json.load(open(tmp_path / "study_summary.json"))
    assert summary["members"]["F"]["metrics"]["loss.rf"]["n"] == 2
    assert summary["differences"]["A"]["loss.rf"]["seeds"] == [0, 1]
    assert main(argv) == 0   # resumed: everything is recorded, nothing trains again
    assert len(sweep_results.read_records(results)) == 4
    assert capsys.readouterr().out.count("already, skipped") == 4


def test_claims_name_members_and_metrics_the_report_has():
    from janusflow.train import sweep_report
    _, members = sweep.load_members(ABL)
    claims = sweep.load_claims(ABL)
    assert {c["member"] for c in claims} <= {m["name"] for m in members} - {"F"}
    assert {c["metric"] for c in claims} <= {k for k, _, _ in sweep_report.COLUMNS}
    assert ("A", "one_object.colour_right", -1) in [(c["member"], c["metric"], c["direction"]) for c in claims]
    assert ("B", "und.overall", -1) in [(c["member"], c["metric"], c["direction"]) for c in claims]
    with pytest.raises(ConfigError, match=r"claims\(\)\[0\] must be"):
        sweep_report.check_claim({"member": "A", "metric": "und.overall", "direction": True}, 0, "x.py")


def test_report_only_reads_the_results_file(tmp_path, capsys):
    from janusflow.train import sweep_results
    path, members = sweep.load_members(ABL)
    runs = sweep.plan_runs(path, [m for m in members if m["name"] in ("A", "F")], [], 2)
    results = str(tmp_path / "r.jsonl")
    colour = {("A", 0): 0.5, ("F", 0): 0.8, ("A", 1): 0.4, ("F", 1): 0.75}
    for r in runs:
        rec = sweep_results.run_record(str(tmp_path / "none"), spec=path, member=r.member, seed=r.seed, seeds=r.seeds,
                                       overrides=list(r.overrides), sha=r.sha, minutes=1.0)
        rec["metrics"]["one_object.colour_right"] = colour[(r.member["name"], r.seed)]
        sweep_results.append_record(results, rec)
    assert main(["sweep", "--config", ABL, "--only", "A,F", "--seeds", "2", "--workdir", str(tmp_path / "w"),
                 "--results", results, "--report"]) == 0
    out = capsys.readouterr().out
    assert not (tmp_path / "w").exists()   # nothing trained
    assert "- A vs F, one_object.colour_right (paper: A below F; REPA helps generation: A FID 19.84" in out
    # -0.30 and -0.35: mean -0.325, half = 12.706 * 0.03536 / 1.4142 = 0.3177 -> [-0.6427, -0.0073]
    assert "**reproduced** -- difference -0.3250, 95% interval [-0.6427, -0.0073] (width 0.6353, 2 paired seeds)" in out
    assert "B vs F" not in out   # a claim about a member this sweep did not run is not judged
