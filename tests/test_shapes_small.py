"""experiments/shapes_small.py: its config loads, its curriculum phase reads one-object scenes
and trains, and the learning curve it records (train/curve.py)."""

import dataclasses
import json
import os

import jax
import pytest

from janusflow.configs.data import SHAPES_32, SHAPES_32_ONE_OBJECT, SourceConfig
from janusflow.configs.loader import load_config
from janusflow.configs.schema import ConfigError, CurriculumPhase, RecipeConfig
from janusflow.shapes import world
from janusflow.shapes.dataset import build_shapes, make_example, shapes_config
from janusflow.train import curve as curve_lib
from janusflow.train import loop
from janusflow.train.recipe import _phase_cfg, phases

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_config_loads_with_the_one_object_phase_before_stage_2():
    for arg in ("", ":quick"):
        cfg = load_config(os.path.join(ROOT, f"experiments/shapes_small.py{arg}"))
        assert phases(cfg.recipe) == ("llm", "stage1", "one_object", "stage2", "stage3")
        one = _phase_cfg(cfg, "one_object", "prev")
        assert one.data.gen.name == SHAPES_32_ONE_OBJECT and one.data.gen.caption == "caption|description"
        assert (one.train.stage, one.train.und_batch, one.train.gen_batch, one.train.text_batch) == (2, 0, 32, 0)
        assert one.train.init_from == "prev" and one.train.optim.lr == cfg.recipe.curriculum[0].lr
        s2 = _phase_cfg(cfg, "stage2", "one_object_dir")
        assert s2.data.gen.name == SHAPES_32 and s2.train.gen_batch > s2.train.und_batch > 0
    with pytest.raises(ConfigError, match="unknown arg"):
        load_config(os.path.join(ROOT, "experiments/shapes_small.py:fast"))


def test_default_run_has_no_curriculum_and_its_phases():
    cfg = load_config(os.path.join(ROOT, "experiments/shapes_tiny.py"))
    assert phases(cfg.recipe) == ("llm", "stage1", "stage2", "stage3") and cfg.recipe.curve_every == 0
    assert _phase_cfg(cfg, "stage2", "p").data == cfg.data


def test_curriculum_phases_are_checked():
    with pytest.raises(ConfigError, match="CurriculumPhase.name"):
        CurriculumPhase(name="stage2", steps=5, lr=1e-3)
    with pytest.raises(ConfigError, match="CurriculumPhase.ratios"):
        CurriculumPhase(name="warm", steps=5, lr=1e-3, ratios=(0, 0, 0))
    with pytest.raises(ConfigError, match="phase names repeat"):
        RecipeConfig(curriculum=(CurriculumPhase("a", 5, 1e-3), CurriculumPhase("a", 5, 1e-3)))
    with pytest.raises(ConfigError, match="curve_every"):
        RecipeConfig(curve_every=-1)


def test_one_object_dataset_holds_one_object_scenes_and_the_default_all_six():
    one = shapes_config(32, 12, 4, tags=world.ONE_OBJECT_TAGS)
    for i in range(12):
        ex = make_example(one, "train", i)
        assert ex["tag"] in world.ONE_OBJECT_TAGS and len(ex["objects"]["shape"]) == 1
    every = shapes_config(32, 12, 4)
    assert [make_example(every, "train", i)["tag"] for i in range(6)] == list(world.TAGS)
    assert one.name != every.name
    with pytest.raises(ValueError, match="not GenEval categories"):
        shapes_config(32, 12, 4, tags=("one",))


@pytest.mark.slow   # compiles a train step and the sampler: minutes on the shared machine
def test_one_object_phase_trains_a_few_steps_and_records_the_curve(tmp_path):
    data = build_shapes(str(tmp_path / "tfds"), shapes_config(32, 64, 16, tags=world.ONE_OBJECT_TAGS))
    cfg = load_config(os.path.join(ROOT, "experiments/shapes_small.py:quick"))
    r = dataclasses.replace(cfg.recipe, batch=4, curve_every=1, sample_steps=2,
                            curriculum=(dataclasses.replace(cfg.recipe.curriculum[0], steps=2,
                                                            gen=SourceConfig(name=data, caption="caption|description")),))
    cfg = dataclasses.replace(cfg, recipe=r)
    pcfg = _phase_cfg(cfg, "one_object", "")
    pcfg = dataclasses.replace(pcfg, train=dataclasses.replace(pcfg.train, init_from=""))
    work = str(tmp_path / "run")
    os.makedirs(work)
    curve = curve_lib.ShapesCurve(cfg, work, loop.run_tokenizer(cfg), log=lambda *_: None)
    loop.train(pcfg, os.path.join(work, "one_object"), devices=jax.devices()[:1], log=lambda *_: None,
               probe=(1, curve.probe("one_object", 100, pcfg.train.gen_batch)))
    assert os.path.isdir(os.path.join(work, "one_object", "model_ema"))
    rows = curve_lib.read_rows(os.path.join(work, curve_lib.CURVE_JSONL))
    assert [(x["phase"], x["step"], x["gen_examples"]) for x in rows] == [("one_object", 1, 104), ("one_object", 2, 108)]
    for x in rows:   # 1 prompt x 1 image per tag: 2 one-object images
        assert x["n_images"] == 6 and x["one_object"]["n"] == 2 and 0 <= x["overall"] <= 1
    assert os.path.getsize(os.path.join(work, curve_lib.CURVE_PNG)) > 1000
    assert len(os.listdir(os.path.join(work, curve_lib.CURVE_DIR, "one_object_000002"))) >= 6   # grids + results


def test_curve_rows_keep_the_last_score_of_a_point_and_name_bad_lines(tmp_path, capsys):
    row = {"phase": "stage2", "step": 5, "gen_examples": 50, "overall": 0.1, "one_object": {"shape_acc": 0.2}}
    with open(tmp_path / "curve.jsonl", "w") as f:
        f.write(json.dumps(row) + "\n" + "{not json\n" + json.dumps({**row, "overall": 0.3}) + "\n"
                + json.dumps({**row, "step": "x"}) + "\n")
    rows = curve_lib.read_rows(str(tmp_path / "curve.jsonl"))
    assert len(rows) == 1 and rows[0]["overall"] == 0.3
    out = capsys.readouterr().out
    assert "curve.jsonl:2: not a curve row" in out and "curve.jsonl:4: not a curve row" in out
