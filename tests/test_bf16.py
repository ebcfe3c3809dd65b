"""bf16 on the fast path: every product of a bf16 model (forward, gradients, sampler) has bf16
operands and fp32 accumulation in the compiled program (XLA:CPU upcasts a bf16 product with a
bf16 result to fp32); fp32 products are unchanged; bf16 results stay within bf16 error of fp32;
peaks and MFU per dtype."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from janusflow.perf import peak as perf
from janusflow.configs import presets
from janusflow.configs.schema import ConfigError
from janusflow.perf.bench_sample import random_model
from janusflow.models import layers
from janusflow.sample.generate import initial_noise, integrate, with_compute_dtype

_T = presets.tiny()
CFG = presets.tiny(llm=dataclasses.replace(_T.llm, num_layers=2), repa_layer=1,
                   gen_codec=dataclasses.replace(_T.gen_codec, num_blocks=1))
BF16 = jnp.bfloat16


def _dots(fn, *args):
    """{(operand dtypes, result dtype): count} of the dots in fn's compiled program."""
    census = perf.product_dtypes(jax.jit(fn).lower(*args).compile().as_text())
    return {(ins, res): n for (op, ins, res), n in census.items() if op == "dot"}


def _rand(key, shape, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(key), shape, jnp.float32).astype(dtype)


def test_product_census_reads_compiled_hlo():
    a, b = _rand(0, (64, 32), BF16), _rand(1, (32, 16), BF16)
    # the plain bf16 product is what XLA:CPU upcasts: fp32 operands in the compiled program
    assert _dots(lambda x, y: x @ y, a, b) == {(("f32", "f32"), "f32"): 1}
    assert _dots(layers.matmul, a, b) == {(("bf16", "bf16"), "f32"): 1}


def test_fp32_products_unchanged():
    x, w = _rand(0, (2, 5, 32)), _rand(1, (32, 16))
    np.testing.assert_array_equal(layers.matmul(x, w), jnp.matmul(x, w))
    q, k, v = _rand(2, (2, 6, 4, 8)), _rand(3, (2, 7, 2, 8)), _rand(4, (2, 7, 2, 8))
    mask = jnp.tril(jnp.ones((6, 7), bool), 1)[None, None] & (jnp.arange(7) > 0)[None, None, None]
    mask = jnp.broadcast_to(mask, (2, 1, 6, 7))
    for m in (None, mask):
        np.testing.assert_allclose(layers.dot_product_attention(q, k, v, m),
                                   jax.nn.dot_product_attention(q, k, v, mask=m), rtol=1e-6, atol=1e-6)


def test_bf16_gradients_take_the_native_path_and_match_fp32():
    x, w = _rand(0, (2, 16, 64)), _rand(1, (64, 32)) * 0.1
    q, k, v = _rand(2, (2, 16, 4, 8)), _rand(3, (2, 16, 2, 8)), _rand(4, (2, 16, 2, 8))

    def loss(x, w, q, k, v):
        h = layers.matmul(x, w).reshape(2, 16, 4, 8)
        return jnp.sum(layers.dot_product_attention(q + h, k, v).astype(jnp.float32) ** 2)

    grad = jax.grad(loss, argnums=(0, 1, 2, 3, 4))
    args16 = [a.astype(BF16) for a in (x, w, q, k, v)]
    dots = _dots(grad, *args16)
    # forward and backward: every product has bf16 operands (old code: all fp32 but the logits)
    assert set(dots) == {(("bf16", "bf16"), "f32")}, dots
    for g16, g32 in zip(grad(*args16), grad(x, w, q, k, v)):
        g16, g32 = np.asarray(g16, np.float32), np.asarray(g32)
        assert np.linalg.norm(g16 - g32) <= 3e-2 * np.linalg.norm(g32)   # bf16: 8-bit mantissa


@pytest.fixture(scope="module")
def models():
    m32 = random_model(CFG, seed=0, std=0.05)
    return m32, with_compute_dtype(m32, CFG, "bfloat16")[0]


def _integrate(model, steps=3, batch=2):
    gd, st = nnx.split(model)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 500, (batch, 6)), jnp.int32)
    args = (gd, st, ids, jnp.ones((batch, 6), bool), initial_noise(CFG, 0, range(batch)), jnp.float32(2.0))
    kw = dict(steps=steps, solver="euler", use_cache=True, mesh=None)
    return integrate(*args, **kw), integrate.lower(*args, **kw).compile().as_text()


def test_bf16_sampler_on_the_native_path_and_within_bf16_error(models):
    m32, m16 = models
    z32, _ = _integrate(m32)
    z16, hlo = _integrate(m16)
    census = {(ins, res): n for (op, ins, res), n in perf.product_dtypes(hlo).items() if op == "dot"}
    assert set(census) == {(("bf16", "bf16"), "f32")}, census
    assert z16.dtype == jnp.float32                  # the sampler's promise: fp32 z whatever the model
    err = np.linalg.norm(np.asarray(z16) - np.asarray(z32)) / np.linalg.norm(np.asarray(z32))
    # bf16 rounding (2^-8 relative) through 2 layers x 3 steps; a wrong product would be O(1)
    assert 1e-5 < err < 3e-2, err


def test_peaks_and_mfu_per_dtype():
    p = perf.measure_matmul_peak(n=128, repeats=1, dtype="bfloat16")
    assert p > 0
    peaks = {"float32": (100.0, "a"), "bfloat16": (250.0, "b")}
    assert perf.mfus(50.0, peaks) == {"mfu_float32": 0.5, "mfu_bfloat16": 0.2}
    assert perf.fast_bf16(peaks) and not perf.fast_bf16({"float32": (100.0, ""), "bfloat16": (110.0, "")})


def test_training_metrics_report_mfu_per_dtype():
    from janusflow.train.metrics import step_metrics
    batch = {"text": {"ids": np.zeros((2, 8), np.int32)}}
    m = step_metrics({"loss": 1.0}, 2.0, batch, None, 100.0, 100.0, {"float32": 50.0, "bfloat16": 200.0})
    assert m["mfu"] == 0.5 and m["mfu_float32"] == 1.0 and m["mfu_bfloat16"] == 0.25


# ------------------------------------------------------------------ official loop side by side
def _tiny_official_cfg():
    return presets.tiny(llm=dataclasses.replace(_T.llm, num_layers=1), repa_layer=1,
                        gen_codec=dataclasses.replace(_T.gen_codec, num_blocks=1))


def test_compare_official_without_the_reference_code_times_ours_only(tmp_path, capsys):
    from janusflow.perf import bench_official
    out = bench_official.run(_tiny_official_cfg(), batches=(1,), dtypes=("bfloat16",), steps=1, repeats=1,
                             prompt_len=4, official_src=str(tmp_path))
    assert not out["official"] and "janus/janusflow/models/uvit.py" in out["why_not_official"]
    (row,) = out["rows"]
    assert row["ours_s_per_step"] > 0 and "official_s_per_step" not in row
    assert "official loop unavailable" in capsys.readouterr().out


def test_compare_official_same_weights_same_latents():
    """With the reference code (a deepseek-ai/Janus checkout in JANUSFLOW_OFFICIAL_SRC, or an
    installed janus package) both loops start from the same weights and noise: fp32 latents agree."""
    from janusflow.perf import bench_official
    src = os.environ.get("JANUSFLOW_OFFICIAL_SRC")
    if bench_official.load_official_uvit(src)[0] is None:
        pytest.skip("reference code (deepseek-ai/Janus) or torch not available")
    out = bench_official.run(_tiny_official_cfg(), batches=(2,), steps=2, repeats=1, prompt_len=5,
                             official_src=src)
    rows = {r["dtype"]: r for r in out["rows"]}
    assert rows["float32"]["latent_rel_diff"] < 1e-4
    assert rows["bfloat16"]["latent_rel_diff"] < 5e-2        # both in bf16, rounded differently
    assert all(r["speedup"] > 0 for r in out["rows"])


def test_compare_official_times_each_matmul_kernel():
    """``matmul_impls``: ours with XLA's dot and with the vendor GEMM in one run, same latents."""
    from janusflow.perf import bench_official
    src = os.environ.get("JANUSFLOW_OFFICIAL_SRC")
    if bench_official.load_official_uvit(src)[0] is None:
        pytest.skip("reference code (deepseek-ai/Janus) or torch not available")
    out = bench_official.run(_tiny_official_cfg(), batches=(1,), dtypes=("float32",), steps=1, repeats=1,
                             prompt_len=4, official_src=src, matmul_impls=("xla", "vendor"))
    (row,) = out["rows"]
    assert row["ours_xla_s_per_step"] > 0 and row["ours_vendor_s_per_step"] > 0
    assert row["speedup_ours_xla"] > 0 and row["speedup_ours_vendor"] > 0
    assert row["ours_vendor_rel_diff_vs_ours_xla"] < 1e-4 and row["latent_rel_diff"] < 1e-4
    with pytest.raises(ConfigError, match="matmul_impl"):
        bench_official.run(_tiny_official_cfg(), matmul_impls=("mkl",), official_src=src)


@pytest.mark.slow
def test_bench_train_compare_dtypes_reports_both_mfus():
    from janusflow.perf import bench_train
    from janusflow.configs.schema import ExperimentConfig, TrainConfig
    cfg = ExperimentConfig(model=CFG, seq_len=64, train=TrainConfig(und_batch=0, gen_batch=8, text_batch=0))
    lines = []
    out = bench_train.run_compare_dtypes(cfg, repeats=2, log=lines.append)
    for d in ("float32", "bfloat16"):
        r = out[d]
        assert r["mfu"] == r[f"mfu_{d}"] > 0 and r["mfu_float32"] > 0 and r["mfu_bfloat16"] > 0
    assert out["speedup"] == out["float32"]["step_time_s"] / out["bfloat16"]["step_time_s"]
    assert any("bf16 steps" in line for line in lines)
