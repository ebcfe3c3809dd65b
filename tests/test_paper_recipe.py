"""The 1.3B recipe as the paper ran it (issue 21): training with the system prompt evaluation
uses, whole conversations up to the row limit, lengths and what each cut drops, rows matching
the paper's tokens per step, the loss-weighting switch, and beg_of_und_embed's semantics."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import nnx

from janusflow.configs.schema import ConfigError, ExperimentConfig, LossConfig, TrainConfig
from janusflow.configs.loader import load_config
from janusflow.data import lengths
from janusflow.data.mixing import task_batches_at
from janusflow.configs.data import DataConfig
from janusflow.data.pipeline import UndProcessor, processors, shapes_tokenizer, whole_turns_end
from janusflow.shapes.dataset import build_shapes, shapes_config
from janusflow.configs.data import SourceConfig
from janusflow.data.sources import open_source
from janusflow.data.step_budget import PAPER_BATCH, PAPER_SEQ_LEN, PAPER_STEPS, format_budget, step_budget
from janusflow.configs.data import SYSTEM_PROMPT
from janusflow.configs.variants import RECTIFIED_FLOW
from janusflow.data.tokenizer import conversation_example
from janusflow.models.janusflow import JanusFlow
from janusflow.configs.presets import tiny
from janusflow.train.step import task_weights

STAGE = {s: f"experiments/janusflow_1_3b.py:stage={s}" for s in (1, 2, 3)}


@pytest.fixture(scope="module")
def tok():
    return shapes_tokenizer(512)


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    tfds.disable_progress_bar()
    return build_shapes(str(tmp_path_factory.mktemp("tfds")), shapes_config(32, 120, 12))


# ------------------------------------------------------------------ 1. system prompt
def test_1_3b_trains_with_the_official_system_prompt(tok):
    for s in STAGE.values():
        assert load_config(s).data.system_prompt == SYSTEM_PROMPT
    # the tiny run keeps what it was measured with (and is evaluated the same way)
    assert load_config("experiments/shapes_tiny.py").data.system_prompt == ""
    cfg = ExperimentConfig(model=tiny(), seq_len=256, data=DataConfig(und_text_len=128))
    proc = processors(cfg, cfg.data, tok)["und"]
    rec = {"image": _png(), "qa": {"question": [b"What colour is it?"], "answer": [b"red"]}}
    out = proc(rec, np.random.default_rng(0))
    text = tok.decode(out["ids"][out["attention_mask"]], skip_special_tokens=True)
    assert text.startswith(SYSTEM_PROMPT), text


def _png():
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------ 6. whole conversations
def test_whole_conversation_kept_up_to_the_limit_loss_on_every_answer(tok):
    assert DataConfig().max_turns == 0 and load_config(STAGE[2]).data.max_turns == 0
    turns = [("How many stars?", "two"), ("What colour is the star?", "red"), ("Where is it?", "at the top left")]
    full, _, full_loss = conversation_example(tok, turns, 4, "", roles=RECTIFIED_FLOW.roles)
    two, _, two_loss = conversation_example(tok, turns[:2], 4, "", roles=RECTIFIED_FLOW.roles)
    length = len(two) + 3                                  # the third turn does not fit
    assert len(full) > length
    proc = UndProcessor(tok, SourceConfig(name="x"), length, 4, None, None, RECTIFIED_FLOW.roles, max_turns=0,
                        system_prompt="")
    rec = {"image": _png(), "qa": {"question": [q.encode() for q, _ in turns],
                                   "answer": [a.encode() for _, a in turns]}}
    out = proc(rec, np.random.default_rng(0))
    n = int(out["attention_mask"].sum())
    assert n == len(two) and "turns_dropped" in out["_flags"] and "truncated" not in out["_flags"]
    np.testing.assert_array_equal(out["ids"][:n], two)
    np.testing.assert_array_equal(out["loss_mask"][:n], two_loss)     # both answers, each whole
    assert whole_turns_end(full_loss, len(full)) == len(full)
    assert whole_turns_end(full_loss, 3) == 0


# ------------------------------------------------------------------ 2. lengths and cuts
def test_lengths_report_agrees_with_what_the_pipeline_does(shapes_dir, tok):
    cfg = ExperimentConfig(model=tiny(), seq_len=256,
                           train=TrainConfig(und_batch=2, gen_batch=2, text_batch=1),
                           data=DataConfig(und=SourceConfig(name=shapes_dir), gen=SourceConfig(name=shapes_dir),
                                           text=SourceConfig(name=shapes_dir, text="description"),
                                           und_text_len=64, prompt_len=20, text_len=16))
    measured = lengths.measure(cfg, n=60, tokenizer=tok)
    rep = lengths.report(cfg, measured, cuts={"und": (40, 64), "gen": (20,), "text": (16,)})
    # the pipeline's own processors on the same records give the same outcomes at the config's cuts
    procs = processors(cfg, cfg.data, tok)
    src = open_source(cfg.data.und, "image")
    flags = {"whole": 0, "turns_dropped": 0, "truncated": 0, "dropped": 0}
    for i in range(60):
        out = procs["und"](src[i], np.random.default_rng(i))
        key = ("dropped" if "_skip" in out else "turns_dropped" if "turns_dropped" in out["_flags"]
               else "truncated" if "truncated" in out["_flags"] else "whole")
        flags[key] += 1
    assert rep["und"]["cuts"][64] == pytest.approx({k: v / 60 for k, v in flags.items()})
    assert rep["und"]["cuts"][64]["turns_dropped"] > 0          # the cut does bite on this data
    # a shorter cut drops more
    assert rep["und"]["cuts"][40]["whole"] <= rep["und"]["cuts"][64]["whole"]
    gen = [procs["gen"](open_source(cfg.data.gen, "image")[i], np.random.default_rng(i)) for i in range(60)]
    assert rep["gen"]["cuts"][20]["truncated"] == pytest.approx(
        sum("truncated" in g["_flags"] for g in gen) / 60, abs=0.1)   # captions drawn at random per field
    assert rep["text"]["n"] == 60 and rep["text"]["stats"]["max"] > 16 and rep["text"]["cuts"][16]["truncated"] > 0
    text = lengths.format_report(rep)
    assert "<- this config" in text and "und: 60 examples" in text


def test_lengths_cli_names_a_bad_source(tmp_path, capsys):
    from janusflow.cli.main import main
    rc = main(["data", "lengths", "--config", "tiny", "--set", f"data.und.name={tmp_path}/none",
               "--set", "data.gen.name=" + str(tmp_path / "none"), "--n", "5"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("janusflow data lengths: error:") and "\n" == err[-1] and err.count("\n") == 1


# ------------------------------------------------------------------ 3. examples per step
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_1_3b_stages_match_the_papers_tokens_per_step_and_per_stage(stage):
    cfg = load_config(STAGE[stage])
    assert cfg.train.steps == PAPER_STEPS[stage]
    paper = PAPER_BATCH[stage] * PAPER_SEQ_LEN
    for start in {0, cfg.train.steps - 1}:
        b = step_budget(cfg, start)
        assert 0.8 * paper <= b["tokens"] <= paper, (stage, start, b)
        assert b["examples"] >= 2 * PAPER_BATCH[stage]      # not 512 padded rows of ~640 tokens
    assert (cfg.data.und_text_len, cfg.data.prompt_len, cfg.data.text_len) == (1024, 256, 2048)
    lines = format_budget(cfg)
    assert any("paper's" in line for line in lines) and "whole run" in lines[-1]


def test_1_3b_stage_2_runs_30_50_20_for_its_first_10k_steps():
    t = load_config(STAGE[2]).train
    early, late = task_batches_at(t, 9_999), task_batches_at(t, 10_000)
    share = lambda s: tuple(round(100 * s[k] / sum(s.values())) for k in ("und", "gen", "text"))  # noqa: E731
    assert share(early) == (30, 50, 20) and share(late) == (14, 80, 6)
    assert load_config(STAGE[1]).train.task_batch_schedule == ()


# ------------------------------------------------------------------ 5. loss weighting
def test_task_weighting_switch():
    counts = {"ar": jnp.float32(50.0), "rf": jnp.float32(6.0), "repa": jnp.float32(6.0), "ar_rows": jnp.float32(2.0)}
    # img: Janus-Pro's image-token term, weighted like the other generation terms
    assert task_weights(counts, LossConfig()) == {"ar": 1.0, "rf": 1.0, "repa": 1.0, "img": 1.0}
    w = task_weights(counts, LossConfig(task_weighting="example", repa_weight=0.5))
    np.testing.assert_allclose([float(w[k]) for k in ("ar", "rf", "repa", "img")], [0.25, 0.75, 0.375, 0.75])
    with pytest.raises(ConfigError, match="LossConfig.task_weighting"):
        LossConfig(task_weighting="token")


# ------------------------------------------------------------------ 7. beg_of_und_embed
@pytest.mark.parametrize("mode", ["official", "learned"])
def test_beg_of_und_embed_semantics(mode):
    cfg = tiny(beg_of_und_embed=mode)
    model = JanusFlow(cfg, rngs=nnx.Rngs(0))
    pixels = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    grads = nnx.grad(lambda m: jnp.sum(m.und_image_embeds(pixels) ** 2))(model)
    g = np.asarray(grads.beg_of_und_embed[...])
    v = np.asarray(model.beg_of_und_embed[...])
    if mode == "official":     # released module: zeros, detached
        assert not v.any() and not g.any()
    else:
        assert v.any() and g.any()
    assert tiny().beg_of_und_embed == "learned" and load_config(STAGE[1]).model.beg_of_und_embed == "official"
