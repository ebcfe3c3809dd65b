"""The transposed layout's decoding matmul (``cpu_gemv.dot_t``, kernels/cpu_gemv_t.cc) and the
decoders' (out, in) weights (``layers.store_transposed``, ``layout.decoding_layout``): the
kernel equals XLA's product on every path (row groups and their remainder, partial last
vectors, 1..8 rows, fp32, bf16 on the dot instruction and widened), the layout computes the same
model, leaves the caller's model alone, and checkpoints refuse it. Needs g++ and an AVX-512 CPU;
elsewhere the kernel tests are skipped with the reason."""

import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from janusflow.configs import presets
from janusflow.kernels import cpu_gemv
from janusflow.models import layers


def _kernel_or_skip():
    if not cpu_gemv.available_t():
        pytest.skip("the AVX-512 gemv_t did not build or cannot run here (see stderr)")


def _rand(key, shape, dtype):
    return jax.random.normal(jax.random.key(key), shape, jnp.float32).astype(dtype)


def _uses_kernel(f, *args):
    return cpu_gemv.TARGET_T in jax.jit(f).lower(*args).as_text()


# groups of 4 (<= 4 rows of x) or 2 (more) rows of wt and the rows left over; K a whole number of
# vectors, K with a partial last vector (fp32 16 / bf16 32 values), K below one vector; N below
# one thread's share; leading axes
SHAPES = [((1, 64), 64), ((2, 2048), 322), ((2, 130), 201), ((8, 100), 70), ((3, 7), 67),
          ((5, 16), 9), ((2, 1, 96), 129), ((4, 2, 33), 191), ((6, 48), 3)]


def _check(x, wt):
    assert _uses_kernel(cpu_gemv.dot_t, x, wt)
    y = jax.jit(cpu_gemv.dot_t)(x, wt)
    assert y.dtype == jnp.float32 and y.shape == x.shape[:-1] + (wt.shape[0],)
    # against float64 sums of the same operands (bf16 products are exact in fp32)
    ref = np.asarray(x, np.float64) @ np.asarray(wt, np.float64).T
    np.testing.assert_allclose(y, ref, rtol=2e-6, atol=2e-6 * float(np.abs(ref).max()))


@pytest.mark.parametrize("shape_x,n", SHAPES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_equals_the_product(shape_x, n, dtype):
    _kernel_or_skip()
    _check(_rand(0, shape_x, dtype), _rand(1, (n, shape_x[-1]), dtype))


def test_one_hot_rows_pick_exact_weights():
    """A one-hot x picks columns of wt exactly: a misplaced output or lane shows."""
    _kernel_or_skip()
    wt = jnp.arange(67 * 45, dtype=jnp.float32).reshape(67, 45).astype(jnp.bfloat16)
    x = jax.nn.one_hot(jnp.array([0, 31, 32, 44]), 45, dtype=jnp.bfloat16)
    np.testing.assert_array_equal(jax.jit(cpu_gemv.dot_t)(x, wt), wt[:, jnp.array([0, 31, 32, 44])].T.astype(jnp.float32))


def test_bf16_widening_path_equals_the_product():
    """CPUs without AVX512-BF16 widen bf16 to fp32 in registers: forced here in a fresh process."""
    _kernel_or_skip()
    code = (
        "import jax, jax.numpy as jnp, numpy as np\n"
        "from janusflow.kernels import cpu_gemv\n"
        "assert not cpu_gemv.bf16_dot_instruction()\n"
        "for (m, k, n) in [(2, 2048, 322), (3, 7, 67), (8, 100, 70), (1, 33, 5)]:\n"
        "    x = jax.random.normal(jax.random.key(0), (m, k)).astype(jnp.bfloat16)\n"
        "    wt = jax.random.normal(jax.random.key(1), (n, k)).astype(jnp.bfloat16)\n"
        "    y = np.asarray(jax.jit(cpu_gemv.dot_t)(x, wt))\n"
        "    ref = np.asarray(x, np.float64) @ np.asarray(wt, np.float64).T\n"
        "    np.testing.assert_allclose(y, ref, rtol=2e-6, atol=2e-6 * np.abs(ref).max())\n"
        "print('ok')\n")
    env = dict(os.environ, JANUSFLOW_GEMV_WIDEN_BF16="1", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_more_rows_stay_on_xla_and_gradients_are_xla():
    _kernel_or_skip()
    x, wt = _rand(0, (cpu_gemv.MAX_ROWS + 1, 32), jnp.float32), _rand(1, (16, 32), jnp.float32)
    assert not _uses_kernel(cpu_gemv.dot_t, x, wt)
    np.testing.assert_allclose(cpu_gemv.dot_t(x, wt), cpu_gemv.xla_dot_t(x, wt), rtol=1e-6)
    x = x[:3]
    loss = lambda mm: (lambda x, wt: jnp.sum(jnp.sin(mm(x, wt))))
    got = jax.jit(jax.grad(loss(cpu_gemv.dot_t), (0, 1)))(x, wt)
    ref = jax.grad(loss(cpu_gemv.xla_dot_t), (0, 1))(x, wt)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["xla", "gemv"])
def test_transposed_linear_computes_the_same(impl):
    lin = layers.Linear(40, 24, axes=("embed", "mlp"), rngs=nnx.Rngs(0))
    x = _rand(1, (2, 3, 40), jnp.float32)
    ref = lin(x)
    kernel = np.asarray(lin.kernel[...])
    layers.store_transposed(lin)
    assert lin.transposed and not hasattr(lin, "kernel") and lin.kernel_t.axes == ("mlp", "embed")
    np.testing.assert_array_equal(lin.kernel_t[...], kernel.T)
    lin.impl = impl
    if impl == "gemv":
        _kernel_or_skip()
        assert _uses_kernel(lambda v: lin(v), x[:, :1])
    np.testing.assert_allclose(lin(x), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lin(x[:, :1]), ref[:, :1], rtol=1e-5, atol=1e-6)


def test_decoding_layout_leaves_the_callers_model_and_checkpoints_refuse_it(tmp_path):
    _kernel_or_skip()
    from janusflow.checkpoint import model_io
    from janusflow.perf.bench_sample import random_model
    from janusflow.sample.layout import decoding_layout, decoding_model
    cfg = presets.tiny_janus_pro(scan_layers=False)
    m = random_model(cfg)
    out, ocfg = decoding_layout(m, cfg)
    assert out is not m and layers.has_transposed(out) and not layers.has_transposed(m)
    np.testing.assert_array_equal(out.gen_head.vision_head.kernel_t[...], m.gen_head.vision_head.kernel[...].T)
    # only the dense layers were copied; norms are the same arrays
    assert out.language_model.norm.scale[...] is m.language_model.norm.scale[...]
    assert decoding_layout(out, ocfg) == (out, ocfg)                # once is enough
    view, vcfg = decoding_model(out, ocfg)                         # a view: no second copy
    assert view.gen_head.vision_head.kernel_t[...] is out.gen_head.vision_head.kernel_t[...]
    with pytest.raises(Exception, match="kernel_t|decoding layout"):
        model_io.save_model(str(tmp_path / "ckpt"), out, ocfg)
    assert not (tmp_path / "ckpt").exists()


def test_decoding_layout_of_a_scanned_model():
    """A stacked model is relaid out per layer, then transposed in place (its own copy)."""
    _kernel_or_skip()
    from janusflow.perf.bench_sample import random_model
    from janusflow.sample.layout import decoding_layout
    cfg = presets.tiny_janus_pro(scan_layers=True)
    m = random_model(cfg)
    out, ocfg = decoding_layout(m, cfg)
    assert not ocfg.scan_layers and layers.has_transposed(out) and not layers.has_transposed(m)
    q = [mod for name, mod in nnx.iter_modules(out) if name[-1:] == ("q_proj",)]
    assert q and all(mod.transposed for mod in q)


def test_decoders_layout_sharded_over_tensor_and_fsdp_axes_samples_the_same_codes():
    """(out, in) weights carry their axis names reversed, so a tensor/fsdp mesh shards them along
    the same logical axes; the AR sampler draws the single-device codes."""
    _kernel_or_skip()
    from janusflow.configs.schema import MeshConfig
    from janusflow.parallel.mesh import make_mesh
    from janusflow.perf.bench_sample import random_model
    from janusflow.sample.ar_generate import generate_ar
    from janusflow.sample.generate import split_for_mesh
    from janusflow.sample.layout import decoding_layout
    cfg = presets.tiny_janus_pro()
    m, cfg = decoding_layout(random_model(cfg, std=0.3), cfg)
    mesh = make_mesh(MeshConfig(data=1, fsdp=2, tensor=2), devices=jax.devices()[:4])
    _, state = split_for_mesh(m, mesh)
    up = state["language_model"]["layers"][0]["mlp"]["up_proj"]["kernel_t"]          # (mlp, embed)
    assert up.sharding.spec[0] == "tensor" and up.sharding.spec[1] == "fsdp"
    prompt = [1, 5, 6, 7, 9]
    one = generate_ar(m, cfg, [prompt], num_samples=2, seed=4, return_codes=True)
    sharded = generate_ar(m, cfg, [prompt], num_samples=2, seed=4, return_codes=True, mesh=mesh)
    np.testing.assert_array_equal(one, sharded)
    assert len(np.unique(one)) > 3
