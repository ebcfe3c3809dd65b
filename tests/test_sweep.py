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


def test_print_emits_one_launch_command_per_member(capsys):
    assert main(["sweep", "--config", ABL, "--workdir", "gs://bucket/abl", "--print",
                 "--set", "train.seed=3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    _, members = sweep.load_members(ABL)
    assert len(lines) == len(members)
    for line, m in zip(lines, members):
        argv = shlex.split(line)
        assert argv[:4] == ["janusflow", "train", "--config", f"{ABL}:{m['arg']}"]
        assert argv[argv.index("--workdir") + 1] == f"gs://bucket/abl/{m['name']}"
        assert argv[-2:] == ["--set", "train.seed=3"]
    assert main(["sweep", "--config", f"{ABL}:paper", "--workdir", "gs://b/x", "--print", "--only", "A,F",
                 "--launcher", "tpu_configs/launch_tpu.sh tpu1 us-east5-a proj tpu_configs/v5p_64.py"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [shlex.split(x)[5:7] for x in lines] == [[f"{ABL}:A,paper", "gs://b/x/A"], [f"{ABL}:F,paper", "gs://b/x/F"]]
    assert all(x.startswith("tpu_configs/launch_tpu.sh tpu1 ") for x in lines)


def test_only_rejects_unknown_members(capsys):
    assert main(["sweep", "--config", ABL, "--workdir", "/tmp/x", "--print", "--only", "A,Q"]) == 2
    assert "unknown member(s) ['Q']" in capsys.readouterr().err


def _write_member(d, losses, shapes=None, und=None, cond=None):
    os.makedirs(os.path.join(d, "stage2"))
    os.makedirs(os.path.join(d, "stage3"))
    with open(os.path.join(d, "stage2", "metrics.jsonl"), "w") as f:
        for s in (10, 20):
            f.write(json.dumps({"step": s, "loss_ar": 1.0, "loss_rf": 2.0, "loss_repa": -0.5}) + "\n")
    with open(os.path.join(d, "stage3", "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"step": 5, **losses}) + "\n")
        f.write('{"step": 6, "loss_ar"')   # a line cut by a kill
    final = {}
    if shapes is not None:
        final["shapes_bench"] = {"per_tag": shapes, "overall": sum(shapes.values()) / len(shapes)}
    if und is not None:
        final["understanding"] = {"overall": und, "baseline": {"overall": 0.4}}
    if cond is not None:
        final["conditioning"] = cond
    with open(os.path.join(d, "results.json"), "w") as f:
        json.dump({"final": final, "total_minutes": 4.0}, f)


def test_results_table_and_plot(tmp_path):
    tags = {"single_object": 1.0, "two_object": 0.5, "counting": 0.25, "colors": 0.0, "position": 0.0,
            "color_attr": 0.75}
    _write_member(str(tmp_path / "A"), {"loss_ar": 0.7, "loss_rf": 0.9, "loss_repa": 0.0}, shapes=tags, und=0.61,
                  cond={"t": [0.5, 0.1], "gap": [0.001, 0.0213], "correct": [1, 1], "shuffled": [1, 1]})
    _write_member(str(tmp_path / "D"), {"loss_ar": 0.6, "loss_rf": 0.0, "loss_repa": 0.0}, und=0.7)
    members = [{"name": "A", "arg": "A", "what": "no REPA"}, {"name": "D", "arg": "D", "what": "und only"},
               {"name": "E", "arg": "E", "what": "gen only"}]
    out = sweep.write_results(ABL, members, str(tmp_path), command="janusflow sweep ...")
    md = open(out).read()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in md.splitlines() if line.startswith("| ") and not line.startswith("| member")}
    assert rows["A"][2:11] == ["1.00", "0.50", "0.25", "0.00", "0.00", "0.75", "0.417", "+0.0213 (t=0.1)", "0.610"]
    assert rows["A"][11:14] == ["0.700", "0.900", "0.000"]
    assert rows["D"][2:10] == ["-"] * 8 and rows["D"][10] == "0.700"
    assert rows["E"][-1] == "not run" and rows["A"][-1] == "done"
    assert "(the best constant answer per question type, e.g. always \"1\" for counts): 0.400;" in md
    assert os.path.getsize(tmp_path / "learning_curves.png") > 1000
    curves = sweep.collect(members[:1], str(tmp_path))[0]["curves"]
    assert curves["loss_rf"][0] == [10, 20, 25]   # stage 3 continues after stage 2's last step


def test_failing_member_does_not_stop_the_sweep(tmp_path):
    exp = tmp_path / "exp.py"
    exp.write_text("from janusflow.configs.schema import ConfigError\n"
                   "def sweep(arg=None):\n"
                   "    return [{'name': 'bad', 'arg': 'bad'}, {'name': 'ok', 'arg': 'ok'}]\n"
                   "def get_config(arg=None):\n"
                   "    raise ConfigError('member ' + str(arg) + ' is broken on purpose')\n")
    work = tmp_path / "w"
    os.makedirs(work / "ok")
    (work / "ok" / "results.json").write_text("{}")   # finished earlier: must be skipped
    path, members = sweep.load_members(str(exp))
    logs = []
    status = sweep.run(path, members, str(work), [], log=logs.append)
    assert status["ok"] == "done" and status["bad"].startswith("failed (exit 2")
    assert "broken on purpose" in (work / "bad.log").read_text()
    assert any("ok: done already, skipped" in line for line in logs)


def test_a_second_sweep_on_the_same_workdir_is_refused(tmp_path):
    from janusflow.train.workdir import WorkdirInUseError, WorkdirLock
    exp = tmp_path / "exp.py"
    exp.write_text("def sweep(arg=None):\n    return [{'name': 'a', 'arg': 'a'}]\n"
                   "def get_config(arg=None):\n    raise RuntimeError('never trained here')\n")
    path, members = sweep.load_members(str(exp))
    work = tmp_path / "w"
    with WorkdirLock(str(work)):   # the first sweep, still running
        with pytest.raises(WorkdirInUseError, match=f"workdir {work} is in use by another run \\(pid {os.getpid()}"):
            sweep.run(path, members, str(work), [], log=lambda *_: None)
        assert sorted(os.listdir(work)) == ["janusflow.lock"]   # no member started, no log file
