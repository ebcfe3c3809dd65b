"""bfloat16 parameters (model.param_dtype=bfloat16): applied when a model is built, float32
optimizer math, stochastic rounding of updates, a fine-tune that trains, checkpoints and
resumes in bf16 with the 8-bit optimizer state."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from janusflow.configs.presets import tiny
from janusflow.models.build import build_model
from janusflow.train.low_precision import apply_updates, stochastic_round


def _dtypes(tree):
    return {str(x.dtype) for x in jax.tree.leaves(tree)}


def test_param_dtype_is_applied_when_a_model_is_built():
    cfg = dataclasses.replace(tiny(), param_dtype="bfloat16")
    concrete = nnx.to_pure_dict(nnx.state(build_model(cfg, seed=3), nnx.Param))
    abstract = nnx.to_pure_dict(nnx.state(build_model(cfg, abstract=True), nnx.Param))
    assert _dtypes(concrete) == {"bfloat16"} and _dtypes(abstract) == {"bfloat16"}
    # the float32 model of the same seed, rounded
    ref = nnx.to_pure_dict(nnx.state(build_model(tiny(), seed=3), nnx.Param))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b.astype(jnp.bfloat16))),
                 concrete, ref)


def test_stochastic_rounding_is_unbiased():
    x = jnp.full((20000,), 1.001, jnp.float32)          # between bf16 1.0 and 1.0078125
    assert float(x.astype(jnp.bfloat16)[0]) == 1.0      # round to nearest loses the 0.001
    r = stochastic_round(x, jax.random.key(0), jnp.bfloat16).astype(jnp.float32)
    assert set(np.unique(np.asarray(r))) == {1.0, 1.0078125}
    assert float(r.mean()) == pytest.approx(1.001, abs=2e-4)
    assert float(stochastic_round(jnp.array([jnp.inf]), jax.random.key(1), jnp.bfloat16)[0]) == np.inf


def test_small_updates_accumulate_in_bf16_weights():
    """Updates 1/6 of bf16's spacing at 0.02 (a 2e-5 learning rate's Adam step): rounded to
    nearest the weights never move; stochastically they move by the sum on average."""
    w = {"w": jnp.full((4096,), 0.02, jnp.bfloat16)}
    u = {"w": jnp.full((4096,), 2e-5, jnp.float32)}
    nearest, stochastic = w, w
    for i in range(100):
        nearest = optax.apply_updates(nearest, u)
        stochastic = apply_updates(stochastic, u, jax.random.key(i))
    start = float(w["w"][0])
    assert float(nearest["w"].astype(jnp.float32).mean()) == start
    moved = float(stochastic["w"].astype(jnp.float32).mean()) - start
    assert moved == pytest.approx(100 * 2e-5, rel=0.05), moved


def test_chunked_rounding_stays_within_the_rounding_of_the_whole_tensor(monkeypatch):
    """A big bf16 leaf is summed and rounded a chunk of rows at a time (its own key per chunk):
    every value is the exact float32 sum rounded down or up to a neighbouring bf16 value, as
    the whole-tensor rounding's is, and the rounding stays unbiased; a small leaf and float32
    leaves are computed exactly as before."""
    from janusflow.train import chunked
    from janusflow.train.low_precision import stochastic_round
    monkeypatch.setattr(chunked, "MAX_VALUES", 4096)
    params = {"big": jnp.full((16, 2048), 0.02, jnp.bfloat16), "small": jnp.full((64,), 0.02, jnp.bfloat16),
              "fp32": jnp.full((16, 2048), 0.02, jnp.float32)}
    updates = jax.tree.map(lambda p: jax.random.uniform(jax.random.key(5), p.shape, minval=-4e-4, maxval=4e-4), params)
    key = jax.random.key(9)
    out = jax.jit(apply_updates)(params, updates, key)
    exact = np.asarray(params["big"].astype(jnp.float32) + updates["big"])
    got = np.asarray(out["big"].astype(jnp.float32))
    down = np.asarray(jnp.asarray(exact).astype(jnp.bfloat16).astype(jnp.float32))   # nearest, then its neighbour
    up = np.asarray(jnp.nextafter(jnp.asarray(down, jnp.bfloat16), jnp.bfloat16(np.sign(exact - down) * np.inf)).astype(jnp.float32))
    assert np.all((got == down) | (got == up))
    assert abs(float(np.mean(got - exact))) < 2e-6          # unbiased: the mean error is ~0
    assert len(np.unique(got)) > 2                           # and the chunks are not one repeated pattern
    # the small leaf: the same key and the same bits as the unchunked rounding (leaf order: big, fp32, small)
    keys = jax.random.split(key, 3)
    want = stochastic_round(params["small"].astype(jnp.float32) + updates["small"], keys[2], jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(out["small"]), np.asarray(want))
    np.testing.assert_array_equal(np.asarray(out["fp32"]), np.asarray(params["fp32"] + updates["fp32"]))


@pytest.mark.slow
def test_bf16_params_8bit_state_fine_tune_trains_checkpoints_and_resumes(tmp_path):
    from test_finetune import _base_checkpoint, _build

    from janusflow.checkpoint.model_io import load_model
    from janusflow.cli.main import main
    data, ckpt = _build(tmp_path), _base_checkpoint(tmp_path)
    wd = tmp_path / "wd"
    cmd = ["train", "--config", f"janusflow:finetune:data={data},name=colors,init={ckpt},steps=4,lr=1e-3,"
           "sample_every=0,params=bf16,optim=adamw8bit", "--workdir", str(wd)]
    assert main(cmd) == 0
    rows = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses and all(np.isfinite(losses))
    base, _ = load_model(str(ckpt))
    tuned, cfg = load_model(str(wd / "model"))
    assert cfg.param_dtype == "bfloat16"
    p_base = nnx.to_pure_dict(nnx.state(base, nnx.Param))
    p_tuned = nnx.to_pure_dict(nnx.state(tuned, nnx.Param))
    assert _dtypes(p_tuned) == {"bfloat16"}
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a.astype(jnp.float32) != b.astype(jnp.float32))),
                         p_tuned, p_base)
    # it trained: every generation-path tensor moved (task=gen: SigLIP, the understanding aligner
    # and the LM head get no gradient)
    gen = {k: v for k, v in moved.items() if k.startswith("gen_")}
    assert all(jax.tree.leaves(gen)) and sum(jax.tree.leaves(moved)) > 0.7 * len(jax.tree.leaves(moved))
    assert losses[-1] < losses[0]
    # the same command again restores the step-4 checkpoint (bf16 params, uint8 moments) and
    # writes the same model
    ckpts = sorted(p.name for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
    assert ckpts and ckpts[-1] == "4", ckpts
    assert main(cmd) == 0
    again, _ = load_model(str(wd / "model"))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 nnx.to_pure_dict(nnx.state(again, nnx.Param)), p_tuned)
