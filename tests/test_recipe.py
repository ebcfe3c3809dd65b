"""The default run's recipe end to end (quick variant) through ``janusflow sweep``: the full
method F (= experiments/shapes_tiny.py) through SigLIP pre-training, LLM pre-training, stages
1-3 and evaluation, in a fresh process as a user runs it (one CPU device; the suite's 8
simulated devices are not inherited). The other members' recipe paths were run by the sweep in
experiments/README.md; here only their cheap parts (data views) are checked."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


CLI = [sys.executable, "-c", "import sys; from janusflow.cli.main import main; sys.exit(main())"]
ENV = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}


def _run(args, cwd, timeout=1200):
    return subprocess.run(CLI + list(args), cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow   # the whole recipe in a subprocess: minutes
def test_quick_sweep_runs_the_whole_recipe(tmp_path):
    work = tmp_path / "abl"
    p = _run(["sweep", "--config", "experiments/ablations.py:quick", "--workdir", str(work), "--only", "F",
              "--keep-runs"], ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for phase in ("init", "llm", "stage1", "stage2", "stage3"):
        assert os.path.isdir(work / "F" / "seed0" / phase), phase   # <workdir>/<member>/seed<s>
    f_res = json.loads((work / "F" / "seed0" / "results.json").read_text())["final"]
    assert set(f_res["shapes_bench"]["per_tag"]) == {"single_object", "two_object", "counting", "colors",
                                                    "position", "color_attr"}
    assert 0 <= f_res["understanding"]["overall"] <= 1 and "understanding_error" not in f_res
    assert 0.2 < f_res["understanding"]["baseline"]["overall"] < 0.8
    cond = f_res["conditioning"]
    assert cond["t"] == [0.1, 0.3, 0.5, 0.7] and cond["n"] == 64
    assert all(abs(s - c - g) < 1e-9 for s, c, g in zip(cond["shuffled"], cond["correct"], cond["gap"]))
    assert f_res["shape_gap"]["t"] == [0.05, 0.1, 0.2, 0.3] and f_res["shape_gap"]["n"] == 192
    assert f_res["shapes_bench"]["one_object"]["n"] == 2   # quick: 1 prompt x 1 image for each one-object tag
    probe = f_res["encoder_probe"]   # the SigLIP's shape/colour probes beside a random tower's
    assert probe["n"] == 1200 and all(0 <= probe[k] <= 1 for k in ("shape", "colour", "random_shape", "random_colour"))
    assert "understanding encoder (SigLIP) probe: shape" in p.stdout
    assert len(list((work / "F" / "seed0" / "eval_final").glob("grid_*.png"))) == 6
    assert (work / "F" / "seed0" / "eval_final" / "denoise.png").stat().st_size > 1000
    assert (work / "F" / "seed0" / "eval_final" / "trajectory.png").stat().st_size > 1000
    assert len(f_res["denoise"]["mse"]) == 6 and "denoise" not in json.loads(
        (work / "F" / "seed0" / "results.json").read_text()).get("untrained", {})
    md = (work / "results.md").read_text()   # the report lies beside <workdir>/results.jsonl
    assert "| F | full method | 1 |" in md
    assert json.loads((work / "results_summary.json").read_text())["members"]["F"]["seeds"] == [0]
    for png in ("results_members.png", "results_curves.png", "F/seed0/learning_curves.png"):
        assert (work / png).stat().st_size > 1000, png
    # every saved model carries its tokenizer: the final model is evaluated on its own
    from janusflow.data.pipeline import shapes_tokenizer
    from janusflow.configs.variants import RECTIFIED_FLOW
    from janusflow.data.tokenizer import Tokenizer, generation_prompt_ids
    ref = generation_prompt_ids(shapes_tokenizer(512), "a photo of a red cross", RECTIFIED_FLOW)
    for d in ("init", "stage1/model", "stage3/model_ema"):
        tok = Tokenizer.load(str(work / "F" / "seed0" / d))
        assert generation_prompt_ids(tok, "a photo of a red cross", RECTIFIED_FLOW) == ref, d
        assert tok.pad_id == shapes_tokenizer(512).pad_id
    p = _run(["eval", "shapes", "--checkpoint", str(work / "F" / "seed0" / "stage3" / "model_ema"), "--n-per-tag", "1",
              "--n-images", "1", "--steps", "2", "--outdir", str(tmp_path / "ev")], ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["n_images"] == 6
    # (a second command skipping the finished member: tests/test_sweep.py::test_failing_member_does_not_stop_the_sweep)


@pytest.mark.parametrize("member", ["A", "D", "E", "AR"])
def test_siglip_pretraining_gets_caption_image_pairs_for_every_ablation(member):
    """SigLIP pre-training reads the gen stream; A (no REPA) and D (no generation) have none of
    their own, so the recipe reads it through a data view (this broke D once)."""
    from janusflow.configs.loader import load_config
    from janusflow.data.pipeline import make_pipeline
    from janusflow.train.recipe import siglip_data_cfg
    cfg = load_config(os.path.join(ROOT, f"experiments/ablations.py:{member},quick"))
    view = siglip_data_cfg(cfg)
    it = make_pipeline(view, view.data)
    batch = next(it)
    it.close() if hasattr(it, "close") else None
    g = batch["gen"]
    n = cfg.recipe.siglip_batch or cfg.recipe.batch
    assert g["repa_pixels"].shape[0] == n and g["prompt_ids"].shape[0] == n
    assert view.model.siglip == cfg.model.siglip and view.data == cfg.data


def test_siglip_batch_sets_the_pair_count_apart_from_the_stage_batch():
    """SigLIP's contrastive loss wants more pairs per step than the stages' batch (shapes_tiny:
    32 vs 16); 0 falls back to the stage batch."""
    import dataclasses
    from janusflow.configs.schema import ConfigError, RecipeConfig
    from janusflow.configs.loader import load_config
    from janusflow.train.recipe import _phase_cfg, siglip_data_cfg
    cfg = load_config(os.path.join(ROOT, "experiments/shapes_tiny.py:quick"))
    for siglip_batch, want in ((24, 24), (0, cfg.recipe.batch)):
        c = dataclasses.replace(cfg, recipe=dataclasses.replace(cfg.recipe, siglip_batch=siglip_batch))
        b = siglip_data_cfg(c).train
        assert (b.und_batch, b.gen_batch, b.text_batch) == (0, want, 0)
        s = _phase_cfg(c, "stage2", "prev").train   # the stages keep their own batch
        assert s.und_batch + s.gen_batch + s.text_batch == cfg.recipe.batch
    with pytest.raises(ConfigError, match="siglip_batch"):
        RecipeConfig(siglip_batch=-1)


@pytest.mark.slow   # the quick recipe in subprocesses, stopped once and resumed: minutes
def test_a_signalled_phase_stops_the_recipe_and_the_same_command_resumes_it(tmp_path):
    """SIGTERM in the middle of stage 2: the phase saves a checkpoint and the recipe stops there
    in one line (exit 75), instead of starting stage 3 on a stage 2 without its final model; the
    same command then resumes stage 2 from that checkpoint and finishes the recipe."""
    work = tmp_path / "run"
    args = ["train", "--config", "experiments/shapes_tiny.py:quick", "--workdir", str(work),
            "--set", "recipe.stage_steps=5,20,5", "--set", "train.log_every=1", "--set", "recipe.eval_untrained=false"]
    proc = subprocess.Popen(CLI + args, cwd=ROOT, env={**ENV, "PYTHONUNBUFFERED": "1"}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines, in_stage2 = [], False
    for line in proc.stdout:
        lines.append(line)
        in_stage2 = in_stage2 or line.startswith("== phase stage2")
        if in_stage2 and line.startswith("step "):   # stage 2's loop is running: its first steps
            proc.send_signal(signal.SIGTERM)
            break
    out = "".join(lines) + proc.communicate(timeout=1800)[0]
    assert proc.returncode == 75, out[-3000:]
    saved = re.search(r"received signal 15: saved step (\d+) and stopping", out)
    assert saved and 0 < int(saved.group(1)) < 20, out[-3000:]
    stopped = [ln for ln in out.splitlines() if ln.startswith("janusflow train:")]
    assert stopped == [f"janusflow train: the recipe stopped in phase stage2, which ended without its final model "
                       f"({work / 'stage2'}/model); the same command resumes it from its last checkpoint"], out[-3000:]
    assert not (work / "stage2" / "model").exists() and not (work / "stage3").exists()
    assert "not a checkpoint" not in out

    p = _run(args, ROOT, timeout=1800)   # the same command
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert f"resumed from step {saved.group(1)} in {work / 'stage2'}" in p.stdout
    ran = [ln.split(":")[0] for ln in p.stdout.splitlines() if ln.startswith("== phase")]
    assert ran == ["== phase stage2", "== phase stage3"], ran   # the finished phases are skipped
    steps = [json.loads(ln)["step"] for ln in (work / "stage2" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 20 and steps == sorted(set(steps))   # resumed, not started over
    assert (work / "results.json").is_file() and (work / "stage3" / "model_ema").is_dir()


def test_a_phase_is_finished_only_when_its_final_models_are_complete(tmp_path):
    """A final-model folder without its config (written last) is a save cut short by a kill:
    the phase runs again (and, having reached its last step, only saves its models)."""
    from janusflow.checkpoint.model_io import CONFIG_NAME
    from janusflow.configs.loader import load_config
    from janusflow.train.recipe import _phase_cfg, phase_finished
    pcfg = _phase_cfg(load_config(os.path.join(ROOT, "experiments/shapes_tiny.py:quick")), "stage2", "prev")
    assert not phase_finished(pcfg, str(tmp_path))
    for name in ("model", "model_ema"):
        (tmp_path / name / "params").mkdir(parents=True)
    assert not phase_finished(pcfg, str(tmp_path))
    (tmp_path / "model" / CONFIG_NAME).write_text("{}")
    assert not phase_finished(pcfg, str(tmp_path))   # the EMA model was being written
    (tmp_path / "model_ema" / CONFIG_NAME).write_text("{}")
    assert phase_finished(pcfg, str(tmp_path))
