"""The sweep's results file (one record per member-seed) and its report, on made-up records whose
statistics are checked against scipy.stats / statistics by hand."""

import json
import math
import os
import statistics

import pytest

from janusflow.train import sweep
from janusflow.train import sweep_report
from janusflow.train import sweep_results

scipy_stats = pytest.importorskip("scipy.stats")

MEMBERS = [{"name": "A", "arg": "A", "what": "no REPA"}, {"name": "B", "arg": "B", "what": "shared"},
           {"name": "D", "arg": "D", "what": "und only"}, {"name": "F", "arg": "F", "what": "full"}]
COLOUR = {"F": [0.90, 0.85, 0.80], "A": [0.60, 0.62, 0.50], "B": [0.95, 0.90]}
UND = {"F": [0.55, 0.60, 0.52], "A": [0.54, 0.61, 0.50], "B": [0.41, 0.46], "D": [0.58]}


def _record(member, seed, metrics, sha=None):
    return {"format": sweep_results.FORMAT, "version": 1, "spec": "exp.py", "member": member, "what": member,
            "arg": member, "seed": seed, "seeds": {"train": seed, "data": seed}, "overrides": [],
            "config_sha": sha or f"{member}{seed}", "minutes": 2.0, "finished": "2026-01-01 00:00:00 UTC",
            "metrics": metrics, "curves": {"loss_rf": [[1, 2, 3], [0.9, 0.8, 0.7 - 0.01 * seed]]}}


def _study(path):
    for s in range(3):
        for m in ("A", "B", "D", "F"):
            metrics = {}
            if s < len(COLOUR.get(m, [])):
                metrics["one_object.colour_right"] = COLOUR[m][s]
            if s < len(UND[m]):
                metrics["und.overall"] = UND[m][s]
            if metrics:
                sweep_results.append_record(path, _record(m, s, metrics))


def _t_interval(xs):
    n = len(xs)
    return scipy_stats.t.interval(0.95, n - 1, loc=statistics.mean(xs), scale=statistics.stdev(xs) / math.sqrt(n))


def test_report_means_intervals_differences_and_verdicts(tmp_path):
    path = str(tmp_path / "study.jsonl")
    _study(path)
    records = sweep_results.read_records(path)
    claims = [{"member": "A", "metric": "one_object.colour_right", "direction": -1, "claim": "REPA helps"},
              {"member": "B", "metric": "und.overall", "direction": -1, "claim": "decoupling helps"},
              {"member": "A", "metric": "und.overall", "direction": -1, "claim": ""},
              {"member": "B", "metric": "one_object.colour_right", "direction": -1, "claim": ""}]
    s = sweep_report.write_report(records, MEMBERS, path, title="t", command="janusflow sweep ...", claims=claims)
    f = s["members"]["F"]["metrics"]["one_object.colour_right"]
    lo, hi = _t_interval(COLOUR["F"])
    assert f["mean"] == pytest.approx(0.85) and (f["lo"], f["hi"]) == (pytest.approx(lo), pytest.approx(hi))
    assert f["values"] == COLOUR["F"] and s["members"]["F"]["seeds"] == [0, 1, 2]
    d = s["differences"]["A"]["one_object.colour_right"]
    diffs = [a - b for a, b in zip(COLOUR["A"], COLOUR["F"])]   # -0.30, -0.23, -0.30
    lo, hi = _t_interval(diffs)
    assert d["mean"] == pytest.approx(statistics.mean(diffs)) and (d["lo"], d["hi"]) == (pytest.approx(lo),
                                                                                         pytest.approx(hi))
    b = s["differences"]["B"]["und.overall"]   # B has seeds 0, 1 only: paired with F's 0, 1
    assert b["seeds"] == [0, 1] and b["mean"] == pytest.approx(((0.41 - 0.55) + (0.46 - 0.60)) / 2)
    assert b["half"] == pytest.approx(0.0, abs=1e-12)   # both differences are -0.14: no spread
    assert s["differences"]["D"]["und.overall"]["half"] is None   # one pair, no interval
    words = [v["verdict"] for v in s["verdicts"]]
    # A colour: interval below 0 (reproduced); B und: -0.14 at both seeds (reproduced, width 0);
    # A und: mixed signs (not separable); B colour: +0.05 at both seeds (the opposite: not reproduced)
    assert words[0] == "reproduced" and words[2] == "not separable at this scale"
    assert words[3] == "not reproduced"
    assert words[1] == "reproduced"
    md = open(tmp_path / "study.md").read()
    half_f = (hi_f := _t_interval(COLOUR["F"])[1]) - 0.85
    assert f"| F | full | 3 | - | 0.850 ± {half_f:.3f} | - |" in md   # shape right: not in these records
    assert "| D | und only | 1 | 0.580 (n=1) | - |" in md
    assert f"{statistics.mean(diffs):+.3f} [{lo:+.3f}, {hi:+.3f}]" in md
    assert "(1 pair)" in md
    assert "A vs F, one_object.colour_right (paper: A below F; REPA helps): **reproduced**" in md
    assert json.load(open(tmp_path / "study_summary.json"))["verdicts"][0]["verdict"] == "reproduced"
    for png in ("study_members.png", "study_curves.png"):
        assert os.path.getsize(tmp_path / png) > 1000
    assert hi_f > 0.85


def test_bad_lines_are_named_and_left_out(tmp_path):
    path = tmp_path / "r.jsonl"
    good = _record("F", 0, {"und.overall": 0.5})
    bad_metric = _record("A", 0, {"und.overall": "0.5"})
    bad_seed = _record("A", 1, {"und.overall": 0.5}) | {"seed": "1"}
    bad_bool = _record("A", 2, {"und.overall": True})
    path.write_text("\n".join(json.dumps(r) for r in (good, bad_metric, bad_seed, bad_bool))
                    + "\n" + json.dumps({"format": "other"}) + "\n" + '{"format": "janusflow-sweep-run", "memb')
    logs = []
    recs = sweep_results.read_records(str(path), log=logs.append)
    assert [r["member"] for r in recs] == ["F"]
    assert logs == [
        f"{path}:2: field 'metrics.und.overall': expected a finite number, got a string ('0.5') (line left out)",
        f"{path}:3: field 'seed': expected an integer >= 0, got a string ('1') (line left out)",
        f"{path}:4: field 'metrics.und.overall': expected a finite number, got true (a boolean) (line left out)",
        f"{path}:5: field 'format': expected 'janusflow-sweep-run', got 'other' (line left out)",
        f"{path}:6: not valid JSON (Unterminated string starting at at column 35) (line left out)"]


def test_report_leaves_out_records_of_another_config(tmp_path):
    path = str(tmp_path / "r.jsonl")
    sweep_results.append_record(path, _record("F", 0, {"und.overall": 0.5}, sha="new"))
    sweep_results.append_record(path, _record("F", 1, {"und.overall": 0.9}, sha="old"))
    runs = [sweep.Run(MEMBERS[3], s, (), {}, "new") for s in (0, 1)]
    s = sweep.report("exp.py", MEMBERS[3:], runs, path, command="c")
    assert s["members"]["F"]["seeds"] == [0]
    assert "1 record(s) of another config" in open(tmp_path / "r.md").read()


def test_eval_metrics_from_a_recipe_result():
    final = {"shapes_bench": {"overall": 0.25, "per_tag": {"colors": 0.5},
                              "one_object": {"n": 8, "one_component": 0.75, "shape_acc": 0.5, "color_acc": None}},
             "conditioning": {"t": [0.1, 0.5], "gap": [0.01, 0.002], "correct": [0.9, 0.4]},
             "shape_gap": {"t": [0.1], "gap": [0.003]},
             "understanding": {"overall": 0.6, "per_qtype": {"count": 0.7}, "baseline": {"overall": 0.4}}}
    assert sweep_results.eval_metrics(final) == {
        "one_object.shape_right": 0.5, "one_object.colour_right": None, "one_object.exactly_one": 0.75,
        "bench.overall": 0.25, "bench.colors": 0.5, "cond_gap.t=0.1": 0.01, "cond_gap.t=0.5": 0.002,
        "val_rf.t=0.1": 0.9, "val_rf.t=0.5": 0.4, "shape_gap.t=0.1": 0.003, "und.overall": 0.6,
        "und.count": 0.7, "und.no_image": 0.4}
    assert sweep_results.eval_metrics([1]) == {}


def test_run_directory_removal_keeps_what_the_run_did_not_write(tmp_path):
    logs = []
    plain = tmp_path / "plain"
    os.makedirs(plain / "model")
    sweep_results.remove_run_dir(str(plain), logs.append)   # no sweep marker: not the sweep's
    assert (plain / "model").is_dir() and "not created by janusflow sweep" in logs[-1]
    run = tmp_path / "run"
    assert sweep_results.claim_run_dir(str(run), {"config_sha": "abc"}) is None
    assert sweep_results.claim_run_dir(str(run), {"config_sha": "abc"}) is None   # the same run: resumes
    assert "holds a run of another config" in sweep_results.claim_run_dir(str(run), {"config_sha": "xyz"})
    os.makedirs(run / "stage3" / "model")
    (run / "results.json").write_text("{}")
    (run / "vq_pretrain.json").write_text("{}")          # the Janus-Pro recipe's vq phase summary
    (run / "notes.txt").write_text("mine")
    sweep_results.remove_run_dir(str(run), logs.append)
    assert sorted(os.listdir(run)) == ["janusflow_sweep_run.json", "notes.txt"]
    assert logs[-1] == f"{run}: kept notes.txt (not written by the run)"


def test_the_untrained_model_is_a_row_when_the_runs_evaluated_it(tmp_path):
    path = str(tmp_path / "u.jsonl")
    for s, (f, u) in enumerate([(0.9, 0.1), (0.8, 0.2), (0.85, 0.0)]):
        sweep_results.append_record(path, _record("F", s, {"one_object.colour_right": f,
                                                           "untrained.one_object.colour_right": u}))
        sweep_results.append_record(path, _record("A", s, {"one_object.colour_right": f - 0.1}))
    s = sweep_report.write_report(sweep_results.read_records(path), [MEMBERS[0], MEMBERS[3]], path, title="t",
                                  command="c")
    assert list(s["members"]) == ["A", "F", "untrained"]
    assert "untrained.one_object.colour_right" not in s["members"]["F"]["metrics"]
    assert s["members"]["untrained"]["metrics"]["one_object.colour_right"]["values"] == [0.1, 0.2, 0.0]
    d = s["differences"]["untrained"]["one_object.colour_right"]   # untrained - F, paired by seed
    lo, hi = _t_interval([-0.8, -0.6, -0.85])
    assert (d["lo"], d["hi"]) == (pytest.approx(lo), pytest.approx(hi))
    assert "| untrained | the initial model of the same seed | 3 | - | 0.100 ±" in open(tmp_path / "u.md").read()
