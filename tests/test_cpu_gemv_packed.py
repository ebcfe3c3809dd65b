"""bf16 weights packed in 12 bits for the decoders (``kernels/cpu_gemv_packed``): packing is
lossless bit for bit (exceptions, zeros, infinities, NaNs, matrices with more than 15 high bytes),
the kernel equals float64 sums of the same operands on every path (row groups and remainders,
1..8 rows, leading axes, the dot instruction and the widening path), other products run on XLA
over the unpacked weights, the handler refuses exception lists that point outside x, and the
decoders' layout packs a bf16 model, samples on a mesh as on one device, and cannot be saved.
Needs g++ and an AVX-512 CPU; elsewhere the kernel tests are skipped with the reason."""

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
from janusflow.kernels import cpu_gemv, cpu_gemv_packed as packed
from janusflow.models import layers


def _kernel_or_skip():
    if not packed.available():
        pytest.skip("the AVX-512 packed gemv did not build or cannot run here (see stderr)")


def _bits(a):
    return np.asarray(jax.lax.bitcast_convert_type(jnp.asarray(a), jnp.uint16))


def _weights(key, n, k, std=0.02):
    return (jax.random.normal(jax.random.key(key), (n, k), jnp.float32) * std).astype(jnp.bfloat16)


def _uses_kernel(f, *args):
    return packed.TARGET in jax.jit(f).lower(*args).as_text()


def test_layout_constants_are_inverse_permutations():
    assert sorted(packed.COLUMN_OF_POSITION) == list(range(packed.BLOCK))
    np.testing.assert_array_equal(packed.COLUMN_OF_POSITION[packed.POSITION_OF_COLUMN], np.arange(packed.BLOCK))
    # unpacklo of lane L takes storage bytes 16 L .. 16 L + 7: columns 8 L .. 8 L + 7
    assert list(packed.COLUMN_OF_POSITION[16:24]) == list(range(8, 16))
    assert list(packed.COLUMN_OF_POSITION[24:32]) == list(range(40, 48))


def test_pack_round_trips_bit_for_bit_with_special_values():
    w = _weights(0, 37, 192)
    special = jnp.array([0.0, -0.0, jnp.inf, -jnp.inf, jnp.nan, 1e-40, -3e38, 1e-30, 7.0], jnp.bfloat16)
    w = w.at[5, :9].set(special).at[36, 183:].set(special)
    p = packed.pack(w)
    assert p.lo.dtype == jnp.uint8 and p.lo.shape == (37, 192) and p.codes.shape == (37, 96)
    assert p.ecol.shape[0] > 0 and int(p.eptr[-1]) == p.ecol.shape[0]
    np.testing.assert_array_equal(_bits(packed.unpack(p)), _bits(w))
    # 12 bits per weight plus the exceptions and the row pointers
    assert p.nbytes < 0.8 * w.size * 2 + 8 * p.ecol.shape[0] + 4 * 38 + 16


def test_pack_round_trips_random_bits():
    """Every bit pattern: far more than 15 high bytes, most weights exceptions."""
    bits = jax.random.randint(jax.random.key(3), (9, 128), 0, 1 << 16, jnp.int32).astype(jnp.uint16)
    w = jax.lax.bitcast_convert_type(bits, jnp.bfloat16)
    p = packed.pack(w)
    assert p.ecol.shape[0] > w.size // 2
    np.testing.assert_array_equal(_bits(packed.unpack(p)), np.asarray(bits))


def test_pack_refuses_what_it_cannot_hold():
    assert not packed.packable(_weights(0, 8, 96)) and not packed.packable(jnp.zeros((8, 64)))
    with pytest.raises(ValueError, match="multiple of 64"):
        packed.pack(_weights(0, 8, 96))


# (rows of x, k, n): row groups of 4 / 2 / 1 and their remainders, one thread (n < 128) or two,
# leading axes
SHAPES = [((1, 64), 64), ((2, 2048), 322), ((2, 128), 201), ((3, 192), 67), ((4, 64), 130),
          ((5, 256), 9), ((8, 128), 70), ((2, 1, 64), 129), ((3, 2, 128), 191),
          # prompts: tiles of 64 rows of w against 8 rows of x at a time, remainders of both
          ((9, 128), 200), ((2, 37, 64), 331), ((packed.MAX_ROWS, 64), 70)]


@pytest.mark.parametrize("shape_x,n", SHAPES)
def test_kernel_equals_the_product(shape_x, n):
    _kernel_or_skip()
    w = _weights(int(n), n, shape_x[-1]).at[n - 1, 3].set(2.5e-30)       # an exception in the last row
    p = packed.pack(w)
    x = jax.random.normal(jax.random.key(1), shape_x, jnp.float32).astype(jnp.bfloat16)
    assert _uses_kernel(packed.dot, x, p)
    y = jax.jit(packed.dot)(x, p)
    assert y.dtype == jnp.float32 and y.shape == x.shape[:-1] + (n,)
    ref = np.asarray(x, np.float64) @ np.asarray(w, np.float64).T
    scale = np.abs(np.asarray(x, np.float64)) @ np.abs(np.asarray(w, np.float64)).T
    assert np.all(np.abs(np.asarray(y) - ref) <= 2e-6 * scale + 1e-30)


def test_one_hot_rows_pick_exact_weights_exceptions_included():
    """A one-hot x picks columns exactly: a misplaced column, lane or exception shows."""
    _kernel_or_skip()
    w = _weights(5, 67, 128, std=1.0)
    w = w.at[:, 40].set(jnp.linspace(-1e-20, 1e-20, 67).astype(jnp.bfloat16))      # exceptions in column 40
    p = packed.pack(w)
    assert set(np.asarray(p.ecol)) >= {40}
    cols = jnp.array([0, 7, 8, 31, 32, 40, 63, 64, 127])
    x = jax.nn.one_hot(cols, 128, dtype=jnp.bfloat16)
    np.testing.assert_array_equal(jax.jit(packed.dot)(x, p), w[:, cols].T.astype(jnp.float32))


def test_widening_path_equals_the_product():
    """CPUs without AVX512-BF16 widen bf16 to fp32 in registers: forced here in a fresh process."""
    _kernel_or_skip()
    code = (
        "import jax, jax.numpy as jnp, numpy as np\n"
        "from janusflow.kernels import cpu_gemv, cpu_gemv_packed as packed\n"
        "assert not cpu_gemv.bf16_dot_instruction()\n"
        "for (m, k, n) in [(2, 2048, 322), (3, 64, 67), (8, 128, 70), (1, 192, 5)]:\n"
        "    x = jax.random.normal(jax.random.key(0), (m, k)).astype(jnp.bfloat16)\n"
        "    w = (jax.random.normal(jax.random.key(1), (n, k)) * 0.02).astype(jnp.bfloat16)\n"
        "    w = w.at[0, 1].set(1e-30)\n"
        "    p = packed.pack(w)\n"
        "    assert packed.used_for(x) and (k < 2048 or p.ecol.shape[0] > 0)\n"
        "    y = np.asarray(jax.jit(packed.dot)(x, p))\n"
        "    ref = np.asarray(x, np.float64) @ np.asarray(w, np.float64).T\n"
        "    scale = np.abs(np.asarray(x, np.float64)) @ np.abs(np.asarray(w, np.float64)).T\n"
        "    assert np.all(np.abs(y - ref) <= 2e-6 * scale + 1e-30)\n"
        "print('ok')\n")
    env = dict(os.environ, JANUSFLOW_GEMV_WIDEN_BF16="1", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_other_products_run_on_xla_over_the_unpacked_weights():
    _kernel_or_skip()
    w = _weights(2, 48, 128)
    p = packed.pack(w)
    for x in (jax.random.normal(jax.random.key(0), (packed.MAX_ROWS + 1, 128)).astype(jnp.bfloat16),
              jax.random.normal(jax.random.key(0), (2, 128), jnp.float32)):
        assert not _uses_kernel(packed.dot, x, p)
        np.testing.assert_array_equal(jax.jit(packed.dot)(x, p), jax.jit(cpu_gemv.xla_dot_t)(x, w.astype(x.dtype)))


def test_handler_refuses_exceptions_outside_x():
    _kernel_or_skip()
    w = _weights(4, 64, 256).at[2, 9].set(1e-30)
    p = packed.pack(w)
    assert p.ecol.shape[0] >= 1
    x = jnp.ones((2, 256), jnp.bfloat16)
    with pytest.raises(Exception, match="column is out of range"):
        jax.block_until_ready(jax.jit(packed.dot)(x, p._replace(ecol=p.ecol.at[0].set(256))))
    with pytest.raises(Exception, match="row pointers"):
        bad = p.eptr.at[3].set(5)
        jax.block_until_ready(jax.jit(packed.dot)(x, p._replace(eptr=bad)))


@pytest.mark.parametrize("impl", ["xla", "gemv"])
def test_packed_linear_computes_the_transposed_one(impl):
    lin = layers.Linear(128, 72, axes=("embed", "mlp"), rngs=nnx.Rngs(0), param_dtype=jnp.bfloat16,
                        dtype=jnp.bfloat16)
    layers.store_transposed(lin)
    x = jax.random.normal(jax.random.key(1), (2, 3, 128)).astype(jnp.bfloat16)
    ref = lin(x, jnp.float32)
    wt = _bits(lin.kernel_t[...])
    assert layers.store_packed(lin) == 1 and lin.packed and not lin.transposed and layers.has_transposed(lin)
    np.testing.assert_array_equal(_bits(packed.unpack(lin.kernel_p.get_value())), wt)
    assert layers.store_packed(lin) == 0
    lin.impl = impl
    if impl == "gemv":
        _kernel_or_skip()
        assert _uses_kernel(lambda v: lin(v), x[:, :1])
    np.testing.assert_allclose(lin(x, jnp.float32), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lin(x[:, :1], jnp.float32), ref[:, :1], rtol=1e-5, atol=1e-5)


def test_store_packed_keeps_what_it_cannot_pack():
    f32 = layers.Linear(128, 8, rngs=nnx.Rngs(0))
    odd = layers.Linear(96, 8, rngs=nnx.Rngs(0), param_dtype=jnp.bfloat16)
    for lin in (f32, odd):
        layers.store_transposed(lin)
        assert layers.store_packed(lin) == 0 and lin.transposed


def _bf16_tiny_janus_pro():
    from janusflow.perf.bench_official import bf16_params
    from janusflow.perf.bench_sample import random_model
    from janusflow.sample.generate import with_compute_dtype
    cfg = presets.tiny_janus_pro(scan_layers=False)
    model, cfg = with_compute_dtype(random_model(cfg, std=0.3), cfg, "bfloat16")
    return bf16_params(model), cfg


def test_decoding_layout_packs_a_bf16_model_and_checkpoints_refuse_it(tmp_path):
    _kernel_or_skip()
    from janusflow.checkpoint import model_io
    from janusflow.sample.layout import decoding_layout
    m, cfg = _bf16_tiny_janus_pro()
    out, ocfg = decoding_layout(m, cfg)
    lins = [mod for _, mod in nnx.iter_modules(out) if isinstance(mod, layers.Linear)]
    assert any(lin.packed for lin in lins) and not layers.has_transposed(m)
    # packed exactly the transposed (out, in) weights of the model it was made from
    np.testing.assert_array_equal(_bits(packed.unpack(out.gen_head.vision_head.kernel_p.get_value())),
                                  _bits(m.gen_head.vision_head.kernel[...].T))
    assert decoding_layout(out, ocfg) == (out, ocfg)
    plain, _ = decoding_layout(m, cfg, pack=False)
    assert not any(mod.packed for _, mod in nnx.iter_modules(plain) if isinstance(mod, layers.Linear))
    with pytest.raises(Exception, match="packed in 12 bits"):
        model_io.save_model(str(tmp_path / "ckpt"), out, ocfg)
    assert not (tmp_path / "ckpt").exists()


def test_packed_decoders_sample_like_the_unpacked_ones_and_the_same_on_a_mesh():
    _kernel_or_skip()
    from janusflow.configs.schema import MeshConfig
    from janusflow.parallel.mesh import make_mesh
    from janusflow.perf.bench_official_ar import first_guided_logits
    from janusflow.sample.ar_generate import generate_ar
    from janusflow.sample.layout import decoding_layout, decoding_model
    m, cfg = _bf16_tiny_janus_pro()
    out, ocfg = decoding_layout(m, cfg)
    plain, _ = decoding_layout(m, cfg, pack=False)
    ids, mask = jnp.array([[1, 5, 6, 7, 9]]), jnp.ones((1, 5), bool)
    logits = [np.asarray(first_guided_logits(*nnx.split(decoding_model(v, ocfg)[0]), ids, mask, jnp.float32(5.0),
                                             jnp.int32(0))) for v in (out, plain)]
    np.testing.assert_allclose(logits[0], logits[1], rtol=2e-2, atol=2e-2 * np.abs(logits[1]).max())
    mesh = make_mesh(MeshConfig(data=2, fsdp=1, tensor=2), devices=jax.devices()[:4])
    prompt = [1, 5, 6, 7, 9]
    one = generate_ar(out, ocfg, [prompt], num_samples=2, seed=4, return_codes=True)
    sharded = generate_ar(out, ocfg, [prompt], num_samples=2, seed=4, return_codes=True, mesh=mesh)
    np.testing.assert_array_equal(one, sharded)
    assert len(np.unique(one)) > 3
