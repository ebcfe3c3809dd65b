"""Our AVX-512 one-position attention (kernels/cpu_decode_attention.py): equals the XLA path
(layers.dot_product_attention) with masks, grouped heads and both dtypes, its gradient is the
XLA path's, the LLM's decoding step runs on it under attention_impl="cpu_decode" (the prefill
does not), and the decoders pick it on CPU. Needs g++ and an AVX-512 CPU; elsewhere skipped
with the reason."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from janusflow.configs import presets
from janusflow.kernels import cpu_decode_attention as kda
from janusflow.models.layers import dot_product_attention
from janusflow.models.llm import LLM, KVCache


def _kernel_or_skip():
    if not kda.available():
        pytest.skip("the AVX-512 decode attention did not build or cannot run here (see stderr)")


def _qkv(b, h, kv, s, hd, dtype):
    q = jax.random.normal(jax.random.key(0), (b, 1, h, hd)).astype(dtype)
    k = jax.random.normal(jax.random.key(1), (b, s, kv, hd)).astype(dtype)
    v = jax.random.normal(jax.random.key(2), (b, s, kv, hd)).astype(dtype)
    return q, k, v


# (16, 16, 128) and (32, 8, 64): bf16's dot-instruction path with 16 heads' logits reduced
# together (and, b=1, heads split between threads: 8 or 16 per item)
@pytest.mark.parametrize("h,kv,hd", [(4, 4, 16), (8, 2, 32), (2, 1, 128), (16, 16, 128), (32, 8, 64)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("b,s", [(3, 37), (1, 5)])
def test_equals_the_xla_path(h, kv, hd, dtype, b, s):
    # b=1: the kernel splits the row's heads between threads; s=5: shorter than one vector
    _kernel_or_skip()
    q, k, v = _qkv(b, h, kv, s, hd, dtype)
    # row 0 sees all, row 1 a prefix, row 2 holes (a CFG row's pads are visible: any pattern)
    valid = np.ones((b, s), bool)
    if b == 3:
        valid[1, 20:] = False
        valid[2, ::3] = False
    valid = jnp.asarray(valid)
    assert kda.used_for(q, k, v)
    assert kda.TARGET in jax.jit(kda.attend).lower(q, k, v, valid).as_text()
    got = jax.jit(kda.attend)(q, k, v, valid)
    ref = dot_product_attention(q, k, v, valid[:, None, None, :])
    assert got.dtype == ref.dtype == dtype and got.shape == ref.shape
    # fp32: sums in another order; bf16: the same, then one bf16 rounding of the result
    tol = 1e-5 if dtype == jnp.float32 else 1e-2
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(ref, np.float32), rtol=tol, atol=tol)
    if b == 3:     # a masked position's value must not leak in, even a NaN (odd and even positions)
        for pos, val in ((25, 1e3), (26, jnp.nan), (3, jnp.inf)):
            k2, v2 = k.at[1 if pos > 20 else 2, pos].set(val), v.at[1 if pos > 20 else 2, pos].set(val)
            np.testing.assert_array_equal(jax.jit(kda.attend)(q, k2, v2, valid), got)


def test_a_row_with_every_position_masked_averages_them_as_xla_does():
    _kernel_or_skip()
    q, k, v = _qkv(2, 4, 2, 21, 16, jnp.float32)
    valid = jnp.ones((2, 21), bool).at[1].set(False)
    got = jax.jit(kda.attend)(q, k, v, valid)
    ref = dot_product_attention(q, k, v, valid[:, None, None, :])
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1, 0], jnp.repeat(v[1].mean(0), 2, axis=0), rtol=1e-5, atol=1e-5)


def test_not_for_more_than_one_query_or_odd_head_width():
    _kernel_or_skip()
    q, k, v = _qkv(1, 2, 2, 9, 16, jnp.float32)
    assert not kda.used_for(jnp.concatenate([q, q], 1), k, v)
    q8, k8, v8 = _qkv(1, 2, 2, 9, 8, jnp.float32)
    assert not kda.used_for(q8, k8, v8)


def test_gradient_is_the_xla_paths():
    _kernel_or_skip()
    q, k, v = _qkv(2, 4, 2, 11, 16, jnp.float32)
    valid = jnp.ones((2, 11), bool).at[0, 7:].set(False)
    loss = lambda f: (lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v, valid))))
    got = jax.grad(loss(kda.attend), (0, 1, 2))(q, k, v)
    ref = jax.grad(loss(kda.xla_attend), (0, 1, 2))(q, k, v)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)


def test_llm_decoding_step_on_the_kernel():
    _kernel_or_skip()
    cfg = presets.tiny().llm
    xla, fast = LLM(cfg, rngs=nnx.Rngs(0)), LLM(cfg, rngs=nnx.Rngs(0), attention_impl="cpu_decode")
    prompt = jax.random.normal(jax.random.key(2), (2, 9, cfg.hidden_size))
    step = jax.random.normal(jax.random.key(3), (2, 1, cfg.hidden_size))
    mask = jnp.ones((2, 9), bool).at[0, :3].set(False)          # a left-padded row

    def decode(m, prompt, step):
        out = m(prompt, attention_mask=mask, cache=KVCache.init(cfg, 2, 16, jnp.float32, per_layer=True), start=0)
        return m(step, cache=out.cache, start=9).hidden, out.hidden

    assert kda.TARGET not in jax.jit(lambda p: fast(p).hidden).lower(prompt).as_text()
    assert kda.TARGET in jax.jit(lambda p, s: decode(fast, p, s)[0]).lower(prompt, step).as_text()
    for got, ref in zip(jax.jit(lambda p, s: decode(fast, p, s))(prompt, step), decode(xla, prompt, step)):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_decoders_pick_it_on_cpu():
    _kernel_or_skip()
    from janusflow.models.llm import Attention
    from janusflow.perf.bench_sample import random_model
    from janusflow.sample.layout import decoding_model
    cfg = presets.tiny_janus_pro()
    m = random_model(cfg)
    view, vcfg = decoding_model(m, cfg)
    # (its blocks run as one call where their weights are packed: tests/test_cpu_decode_block.py)
    assert vcfg.attention_impl == "cpu_block"
    assert {a.impl for _, a in nnx.iter_modules(view.language_model) if isinstance(a, Attention)} == {"cpu_block"}
    assert {a.impl for _, a in nnx.iter_modules(m.language_model) if isinstance(a, Attention)} == {"xla"}


def test_falls_back_without_compiler(monkeypatch, tmp_path, capsys):
    from janusflow.models.attention import attend
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))     # no cached build to reuse
    kda.available.cache_clear()
    try:
        q, k, v = _qkv(2, 4, 2, 11, 16, jnp.float32)
        assert not kda.used_for(q, k, v)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "cpu_decode_attention unavailable, using XLA's attention" in err[0]
        mask = jnp.ones((2, 1, 1, 11), bool)
        np.testing.assert_allclose(attend(q, k, v, mask, "cpu_decode"), dot_product_attention(q, k, v, mask))
    finally:
        kda.available.cache_clear()
