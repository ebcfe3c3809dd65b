"""The conditioning gap (shapes/conditioning.py): the RF loss with shuffled minus correct prompts."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import nnx

from janusflow.configs import presets
from janusflow.configs.schema import ExperimentConfig, TrainConfig
from janusflow.configs.data import DataConfig
from janusflow.shapes.dataset import build_shapes, shapes_config
from janusflow.configs.data import SourceConfig
from janusflow.shapes import conditioning
from janusflow.models.janusflow import JanusFlow
from janusflow.models.vae import make_vae


def _batch(n=6, length=5):
    ids = np.arange(n * length, dtype=np.int32).reshape(n, length) % 50 + 3
    return {"gen": {"prompt_ids": jnp.asarray(ids), "prompt_mask": jnp.ones((n, length), bool),
                    "target": jnp.asarray(ids[:, -1].astype(np.float32))}}


def test_gap_is_positive_for_a_prompt_reading_loss_and_zero_for_one_that_ignores_it():
    seen_keys = []

    def reads(g, t, key, mask):   # perfect with the right prompt, worse with another row's
        seen_keys.append(np.asarray(jax.random.key_data(key)))
        return jnp.mean((g["prompt_ids"][:, -1] - g["target"]) ** 2) * (1 - t[0])

    def ignores(g, t, key, mask):
        return jnp.mean(g["target"] ** 2) * (1 - t[0])

    r = conditioning.gap_from_losses(reads, _batch(), ts=(0.1, 0.5))
    assert r["correct"] == [0.0, 0.0]
    assert r["gap"][0] > r["gap"][1] > 0 and r["n"] == 6
    # both calls of one t draw their noise from the same key: the prompt is the only difference
    assert all(np.array_equal(seen_keys[0], k) for k in seen_keys)
    z = conditioning.gap_from_losses(ignores, _batch(), ts=(0.1,))
    assert z["gap"] == [0.0] and z["correct"][0] > 0
    assert "gap +0.0000" in conditioning.summary(z)


def test_gap_refuses_one_example_and_a_bad_t():
    with pytest.raises(ValueError, match="at least 2"):
        conditioning.gap_from_losses(lambda *a: 0.0, _batch(n=1))
    with pytest.raises(ValueError, match="t must be in"):
        conditioning.gap_from_losses(lambda *a: 0.0, _batch(), ts=(1.0,))


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    tfds.disable_progress_bar()
    path = build_shapes(str(tmp_path_factory.mktemp("tfds")), shapes_config(32, 8, 8))
    model_cfg = presets.tiny()
    cfg = ExperimentConfig(name="cond", model=model_cfg, seq_len=256, train=TrainConfig(stage=2),
                           data=DataConfig(gen=SourceConfig(name=path)))
    model = JanusFlow(model_cfg, rngs=nnx.Rngs(0))
    vae = make_vae(model_cfg.vae, rngs=nnx.Rngs(0))
    return cfg, model, vae


def test_real_model_gap_on_validation_prompts(tiny_setup):
    cfg, model, vae = tiny_setup
    b = conditioning.validation_batch(cfg, n=8)
    assert b["gen"]["prompt_ids"].shape[0] == 8
    fn = conditioning.model_loss_fn(model, vae, cfg)
    r = conditioning.gap_from_losses(fn, b, ts=(0.1, 0.5))
    # an untrained model is prompt-sensitive (random attention to the prompt), so shuffling
    # changes its loss: the measurement really reaches the prompt
    assert all(abs(g) > 1e-6 for g in r["gap"]) and all(np.isfinite(r["correct"]))
    # ... and with every row holding the same prompt, shuffling is a no-op: gap exactly 0
    g = b["gen"]
    same = {"gen": {**g, "prompt_ids": jnp.broadcast_to(g["prompt_ids"][:1], g["prompt_ids"].shape),
                    "prompt_mask": jnp.broadcast_to(g["prompt_mask"][:1], g["prompt_mask"].shape)}}
    assert conditioning.gap_from_losses(fn, same, ts=(0.1,))["gap"] == [0.0]


def test_validation_batch_needs_a_generation_source(tiny_setup):
    cfg = tiny_setup[0]
    no_gen = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, gen=SourceConfig(name="")))
    with pytest.raises(ValueError, match="generation source"):
        conditioning.validation_batch(no_gen)


def test_shape_swap_prompts_change_only_the_shape_word():
    from janusflow.shapes import world as shapes
    items = conditioning.shape_swap_prompts(60, seed=3)
    assert [md["include"][0]["class"] for md, _ in items[:6]] == list(shapes.SHAPES)
    for md, other in items:
        want = md["include"][0]
        right = md["prompt"].split()
        wrong = other.split()
        assert len(right) == len(wrong) and right[:-1] == wrong[:-1]   # "a photo of a <colour>"
        assert right[-1] == want["class"] and wrong[-1] in shapes.SHAPES and wrong[-1] != want["class"]
        assert want["color"] in right
    assert len({other.split()[-1] for _, other in items}) == len(shapes.SHAPES)


def test_shape_gap_of_a_tiny_model_and_its_cli(tiny_setup, tmp_path, capsys):
    from janusflow.checkpoint.model_io import save_model
    from janusflow.cli.main import main
    from janusflow.data.pipeline import shapes_tokenizer
    cfg, model, vae = tiny_setup
    tok = shapes_tokenizer(cfg.model.llm.vocab_size)
    r = conditioning.shape_gap(model, vae, cfg, tok, n=12, ts=(0.1, 0.5))
    assert r["n"] == 12 and r["t"] == [0.1, 0.5] and all(np.isfinite(r["correct"] + r["shuffled"]))
    # the swapped word reaches the model: an untrained model's loss changes with it
    assert all(abs(g) > 1e-7 for g in r["gap"])
    # the CLI on the saved model: its own tokenizer, default shape-gap t values
    save_model(str(tmp_path / "m"), model, cfg.model, tok)
    assert main(["eval", "conditioning", "--checkpoint", str(tmp_path / "m"), "--config", "tiny",
                 "--shape-swap", "--n", "6"]) == 0
    assert "t=0.05:" in capsys.readouterr().out
