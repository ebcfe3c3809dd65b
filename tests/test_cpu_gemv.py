"""Our AVX-512 decoding matmul (kernels/cpu_gemv.py): products of at most MAX_ROWS rows run on
it and equal XLA's dot (fp32 to rounding; bf16 with the same exact products and fp32 sums),
larger ones stay on XLA's dot, its gradients are XLA's, ``matmul_impl="gemv"`` puts the LLM's
decoding steps and the Janus-Pro generation head on it with the same sampled codes, and
without a compiler it falls back to XLA's dot saying why. Needs g++ and an AVX-512 CPU (this
machine's); elsewhere the kernel tests are skipped with the reason."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from janusflow.configs import presets
from janusflow.kernels import cpu_gemv
from janusflow.models import layers
from janusflow.models.llm import LLM, KVCache


def _kernel_or_skip():
    if not cpu_gemv.available():
        pytest.skip("the AVX-512 gemv did not build or cannot run here (see stderr)")


def _rand(key, shape, dtype):
    return jax.random.normal(jax.random.key(key), shape, jnp.float32).astype(dtype)


def _uses_kernel(f, *args):
    return cpu_gemv.TARGET in jax.jit(f).lower(*args).as_text()


# shapes that reach every path: 128-column tiles (<= 2 rows) then a 64-column one (320 = 2 x 128
# + 64), full 64-column tiles, a tail of N % 64 columns, N below one tile,
# K below one 8-row block (one thread), K not a multiple of the block, 1..8 rows, leading axes
@pytest.mark.parametrize("shape_x,n", [((1, 64), 64), ((2, 2048), 320), ((2, 130), 200), ((8, 100), 70),
                                       ((3, 7), 64), ((5, 16), 8), ((2, 1, 96), 129), ((4, 2, 33), 191)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_equals_xla_dot(shape_x, n, dtype):
    _kernel_or_skip()
    x, w = _rand(0, shape_x, dtype), _rand(1, (shape_x[-1], n), dtype)
    assert _uses_kernel(cpu_gemv.dot, x, w)
    y = jax.jit(cpu_gemv.dot)(x, w)
    assert y.dtype == jnp.float32 and y.shape == shape_x[:-1] + (n,)
    # the same operands (bf16 products are exact in fp32) summed in another order
    ref = cpu_gemv.xla_dot(x, w)
    np.testing.assert_allclose(y, ref, rtol=2e-6, atol=2e-6 * float(jnp.max(jnp.abs(ref))))


@pytest.mark.parametrize("rows", [[0, 4, 8], [3, 7]])   # 64-column tiles; 128 then 64 then a tail
def test_column_order_of_bf16_tiles(rows):
    """bf16 tiles are summed in (even, odd) column order and put back: a one-hot x picks rows
    of w exactly, so any misplaced column shows."""
    _kernel_or_skip()
    w = jnp.arange(9 * 200, dtype=jnp.float32).reshape(9, 200).astype(jnp.bfloat16)
    x = jax.nn.one_hot(jnp.array(rows), 9, dtype=jnp.bfloat16)
    np.testing.assert_array_equal(jax.jit(cpu_gemv.dot)(x, w), w[jnp.array(rows)].astype(jnp.float32))


def test_more_rows_stay_on_xla():
    _kernel_or_skip()
    x, w = _rand(0, (cpu_gemv.MAX_ROWS + 1, 32), jnp.float32), _rand(1, (32, 16), jnp.float32)
    assert not _uses_kernel(cpu_gemv.dot, x, w)
    assert _uses_kernel(cpu_gemv.dot, x[:cpu_gemv.MAX_ROWS], w)
    np.testing.assert_allclose(cpu_gemv.dot(x, w), cpu_gemv.xla_dot(x, w), rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gradients_equal_xla(dtype):
    _kernel_or_skip()
    x, w = _rand(0, (2, 3, 40), dtype), _rand(1, (40, 72), dtype)
    loss = lambda mm: (lambda x, w: jnp.sum(jnp.sin(mm(x, w))))
    gv = jax.jit(jax.grad(loss(cpu_gemv.dot), (0, 1)))(x, w)
    gx = jax.jit(jax.grad(loss(lambda x, w: layers.matmul(x, w, jnp.float32)), (0, 1)))(x, w)
    tol = 1e-5 if dtype == jnp.float32 else 1e-2
    for v, r in zip(gv, gx):
        assert v.dtype == r.dtype == dtype
        np.testing.assert_allclose(np.asarray(v, np.float32), np.asarray(r, np.float32), rtol=tol, atol=tol)


def test_llm_decoding_step_on_the_kernel_prefill_on_xla():
    _kernel_or_skip()
    cfg = presets.tiny().llm
    xla, gemv = LLM(cfg, rngs=nnx.Rngs(0)), LLM(cfg, rngs=nnx.Rngs(0), matmul_impl="gemv")
    prompt, step = _rand(2, (2, 9, cfg.hidden_size), jnp.float32), _rand(3, (2, 1, cfg.hidden_size), jnp.float32)

    def decode(m, prompt, step):
        out = m(prompt, cache=KVCache.init(cfg, 2, 16, jnp.float32, per_layer=True), start=0)
        return m(step, cache=out.cache, start=9).hidden, out.hidden

    # the prefill has 18 rows: XLA's dot; the step has 2: the kernel
    assert not _uses_kernel(lambda p: gemv(p).hidden, prompt)
    assert _uses_kernel(lambda p, s: decode(gemv, p, s)[0], prompt, step)
    for got, ref in zip(jax.jit(lambda p, s: decode(gemv, p, s))(prompt, step), decode(xla, prompt, step)):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_janus_pro_samples_the_same_codes_on_the_kernels():
    """The AR sampler (which decodes on the kernels on CPU: layout.decoding_model) draws the
    codes of the all-XLA program (fp32, peaked logits: a wrong product would change them)."""
    _kernel_or_skip()
    from janusflow.perf.bench_sample import random_model
    from janusflow.sample.ar_generate import generate_ar, image_keys, sample_codes
    from janusflow.sample.generate import bucket_len, pad_prompts
    from janusflow.sample.layout import decoding_model
    cfg = presets.tiny_janus_pro()
    m = random_model(cfg, std=0.3)
    view, vcfg = decoding_model(m, cfg)
    assert vcfg.matmul_impl == "gemv"
    impls = {n: mod.impl for n, mod in nnx.iter_modules(view) if isinstance(mod, layers.Linear)}
    assert {impls[n] for n in impls if n[0] in ("language_model", "gen_aligner", "gen_head")} == {"gemv"}
    prompt = [1, 5, 6, 7, 9]
    ids, mask = pad_prompts([prompt] * 2, bucket_len(len(prompt), 10 ** 6), 0)
    graphdef, state = nnx.split(m)                      # the caller's model: all XLA
    ref = sample_codes(graphdef, state, jnp.asarray(ids), jnp.asarray(mask), image_keys(4, [0, 1]),
                       jnp.float32(5.0), jnp.float32(1.0), jnp.int32(0), num_tokens=cfg.num_gen_tokens)
    got = generate_ar(m, cfg, [prompt], num_samples=2, seed=4, return_codes=True)
    np.testing.assert_array_equal(got, np.asarray(ref))
    assert len(np.unique(got)) > 3                 # not a constant draw


def test_falls_back_without_compiler(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))     # no cached build to reuse
    cpu_gemv.available.cache_clear()
    try:
        x, w = _rand(0, (2, 16), jnp.float32), _rand(1, (16, 8), jnp.float32)
        assert not _uses_kernel(cpu_gemv.dot, x, w)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "cpu_gemv unavailable, using XLA's dot" in err[0]
        np.testing.assert_allclose(cpu_gemv.dot(x, w), cpu_gemv.xla_dot(x, w), rtol=1e-6)
    finally:
        cpu_gemv.available.cache_clear()


def test_decoders_use_the_kernel_on_a_view():
    """``layout.decoding_model`` (what the AR sampler and chat decode with): on CPU the default
    "xla" model becomes one with every dense layer on the kernel, the caller's model unchanged; an explicit "vendor" choice is kept (the attention kernel, a
    separate choice, still applies)."""
    _kernel_or_skip()
    from janusflow.perf.bench_sample import random_model
    from janusflow.sample.layout import decoding_model
    cfg = presets.tiny_janus_pro(scan_layers=True)
    m = random_model(cfg)
    view, vcfg = decoding_model(m, cfg)
    assert vcfg.matmul_impl == "gemv" and not vcfg.scan_layers
    assert {mod.impl for _, mod in nnx.iter_modules(view) if isinstance(mod, layers.Linear)} == {"gemv"}
    assert {mod.impl for _, mod in nnx.iter_modules(m) if isinstance(mod, layers.Linear)} == {"xla"}
    assert decoding_model(view, vcfg) == (view, vcfg)
    flat = random_model(dataclasses.replace(cfg, scan_layers=False))
    fview = decoding_model(flat, dataclasses.replace(cfg, scan_layers=False))[0]
    # dense weights in the decoders' (out, in) layout (tests/test_cpu_gemv_t.py), the rest shared
    assert fview is not flat and fview.gen_head.vision_head.transposed and not flat.gen_head.vision_head.transposed
    assert fview.language_model.norm.scale[...] is flat.language_model.norm.scale[...]
    vendor = dataclasses.replace(cfg, matmul_impl="vendor", scan_layers=False)
    vm = random_model(vendor)
    vview, vvcfg = decoding_model(vm, vendor)
    assert vvcfg.matmul_impl == "vendor" and vvcfg.attention_impl == "cpu_block"   # its blocks are not packed
    assert {mod.impl for _, mod in nnx.iter_modules(vview.language_model) if isinstance(mod, layers.Linear)} == {"vendor"}


def test_calls_from_several_threads_share_the_pool():
    """XLA calls a custom call from whichever of its threads runs it; the kernels' one thread
    pool takes such calls in turns: concurrent callers all get their own right answer."""
    import concurrent.futures
    _kernel_or_skip()
    xs = [_rand(i, (2, 512), jnp.bfloat16) for i in range(4)]
    w = _rand(9, (512, 384), jnp.bfloat16)
    f = jax.jit(cpu_gemv.dot)
    refs = [np.asarray(cpu_gemv.xla_dot(x, w)) for x in xs]
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        outs = list(ex.map(lambda i: [np.asarray(f(xs[i % 4], w)) for _ in range(20)], range(8)))
    for i, got in enumerate(outs):
        for y in got:
            np.testing.assert_allclose(y, refs[i % 4], rtol=2e-6, atol=2e-6 * float(np.abs(refs[i % 4]).max()))


def test_every_kernel_source_and_header_ships_with_the_package():
    """A wheel install compiles from the package's own files: each .cc and .h here must be
    package data (setup.py) and in the sdist (MANIFEST.in)."""
    import os
    from janusflow.kernels import build
    root = os.path.dirname(os.path.dirname(build.HERE))
    files = [f for f in os.listdir(build.HERE) if f.endswith((".cc", ".h"))]
    assert set(build.DECODING_KERNELS) <= set(files) and {"thread_pool.h", "bf16.h"} <= set(files)
    setup, manifest = (open(os.path.join(root, f)).read() for f in ("setup.py", "MANIFEST.in"))
    for f in files:
        assert f'"{f}"' in setup, f"{f} missing from setup.py package_data"
        assert f"janusflow/kernels/{f}" in manifest, f"{f} missing from MANIFEST.in"
