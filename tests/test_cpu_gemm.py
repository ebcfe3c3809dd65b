"""The vendor CPU matmul (kernels/cpu_gemm.py): equals XLA's dot (fp32 to rounding, bf16 within
bf16 error), its gradients equal the XLA path's, the LLM and SigLIP run on it when
``ModelConfig.matmul_impl="vendor"``, and without MKL or a compiler it falls back to XLA's dot
saying why. The vendor tests need MKL (``pip install mkl mkl-include`` or
``JANUSFLOW_MKL_ROOT``) and g++; without them they are skipped with that reason."""

import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from janusflow.configs import presets
from janusflow.configs.schema import ConfigError, ModelConfig
from janusflow.kernels import cpu_gemm
from janusflow.models import layers
from janusflow.models.llm import LLM
from janusflow.models.siglip import SiglipVisionTower


def _vendor_or_skip():
    try:
        cpu_gemm.find_mkl()
    except cpu_gemm.Unavailable as e:
        pytest.skip(str(e))
    if not cpu_gemm.available():
        pytest.skip("the vendor matmul did not build here (see stderr)")


def _xla(a, b):
    return jnp.matmul(a, b, preferred_element_type=jnp.float32)


def _rand(key, shape, dtype):
    return jax.random.normal(jax.random.key(key), shape, jnp.float32).astype(dtype)


def _uses_custom_call(f, *args):
    return cpu_gemm.TARGET in jax.jit(f).lower(*args).as_text()


@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)])
def test_gemm_equals_xla_dot_fp32(trans_a, trans_b):
    _vendor_or_skip()
    m, k, n = 37, 70, 29
    a = _rand(0, (k, m) if trans_a else (m, k), jnp.float32)
    b = _rand(1, (n, k) if trans_b else (k, n), jnp.float32)
    f = lambda a, b: cpu_gemm.gemm(a, b, trans_a, trans_b)
    assert _uses_custom_call(f, a, b)
    ref = _xla(a.T if trans_a else a, b.T if trans_b else b)
    np.testing.assert_allclose(jax.jit(f)(a, b), ref, rtol=1e-5, atol=1e-5)


def test_dot_bf16_within_bf16_error():
    _vendor_or_skip()
    x, w = _rand(0, (3, 11, 64), jnp.bfloat16), _rand(1, (64, 48), jnp.bfloat16)
    assert _uses_custom_call(cpu_gemm.dot, x, w)
    y = jax.jit(cpu_gemm.dot)(x, w)
    assert y.dtype == jnp.float32 and y.shape == (3, 11, 48)
    # same bf16 operands, fp32 sums in both: only the summation order differs
    np.testing.assert_allclose(y, _xla(x, w), rtol=1e-5, atol=1e-4)
    # and against the fp32 product of the unrounded operands, the error is bf16's
    x32, w32 = _rand(0, (3, 11, 64), jnp.float32), _rand(1, (64, 48), jnp.float32)
    err = jnp.max(jnp.abs(y - _xla(x32, w32))) / jnp.max(jnp.abs(_xla(x32, w32)))
    assert 0 < err < 2 ** -6


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gradients_equal_xla(dtype):
    _vendor_or_skip()
    x, w = _rand(0, (2, 9, 40), dtype), _rand(1, (40, 24), dtype)
    loss = lambda mm: (lambda x, w: jnp.sum(jnp.sin(mm(x, w))))
    gv = jax.jit(jax.grad(loss(cpu_gemm.dot), (0, 1)))(x, w)
    # the XLA reference with the same rounding of the cotangent (layers' bf16 rule)
    gx = jax.jit(jax.grad(loss(lambda x, w: layers.matmul(x, w, jnp.float32)), (0, 1)))(x, w)
    tol = 1e-5 if dtype == jnp.float32 else 1e-2
    for v, r in zip(gv, gx):
        assert v.dtype == r.dtype == dtype
        np.testing.assert_allclose(np.asarray(v, np.float32), np.asarray(r, np.float32), rtol=tol, atol=tol)


def test_llm_and_siglip_on_the_vendor_matmul():
    _vendor_or_skip()
    cfg = presets.tiny()
    xla, vendor = LLM(cfg.llm, rngs=nnx.Rngs(0)), LLM(cfg.llm, rngs=nnx.Rngs(0), matmul_impl="vendor")
    embeds = _rand(2, (2, 7, cfg.llm.hidden_size), jnp.float32)
    assert _uses_custom_call(lambda e: vendor(e).hidden, embeds)
    np.testing.assert_allclose(vendor(embeds).hidden, xla(embeds).hidden, rtol=1e-4, atol=1e-4)
    sx = SiglipVisionTower(cfg.siglip, rngs=nnx.Rngs(0))
    sv = SiglipVisionTower(cfg.siglip, rngs=nnx.Rngs(0), matmul_impl="vendor")
    px = _rand(3, (2, cfg.siglip.image_size, cfg.siglip.image_size, 3), jnp.float32)
    np.testing.assert_allclose(sv(px), sx(px), rtol=1e-4, atol=1e-4)
    # and training through it: the LLM's parameter gradients match
    grads = [nnx.grad(lambda m: jnp.sum(m(embeds).hidden ** 2))(m) for m in (xla, vendor)]
    for gx, gv in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(gv, gx, rtol=1e-3, atol=1e-3)


def test_config_switch():
    with pytest.raises(ConfigError, match="ModelConfig.matmul_impl"):
        ModelConfig(matmul_impl="mkl")
    cfg = dataclasses.replace(presets.tiny(), matmul_impl="vendor")
    from janusflow.models.janusflow import JanusFlow
    model = JanusFlow(cfg, rngs=nnx.Rngs(0))
    impls = {m.impl for _, m in nnx.iter_modules(model) if isinstance(m, layers.Linear)}
    assert "vendor" in impls            # the LLM's and SigLIP's
    assert "xla" in impls               # the others (aligners, REPA projector) stay on XLA


@pytest.fixture
def no_mkl(tmp_path, monkeypatch):
    monkeypatch.setenv("JANUSFLOW_MKL_ROOT", str(tmp_path))
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    cpu_gemm.available.cache_clear()
    yield
    cpu_gemm.available.cache_clear()


def test_falls_back_to_xla_without_mkl(no_mkl, capsys):
    with pytest.raises(cpu_gemm.Unavailable, match="MKL not found"):
        cpu_gemm.find_mkl()
    x, w = _rand(0, (5, 16), jnp.float32), _rand(1, (16, 8), jnp.float32)
    assert not _uses_custom_call(cpu_gemm.dot, x, w)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "using XLA's dot" in err[0] and "MKL not found" in err[0]
    np.testing.assert_allclose(cpu_gemm.dot(x, w), _xla(x, w), rtol=1e-6)
    g = jax.grad(lambda x: jnp.sum(cpu_gemm.dot(x, w) ** 2))(x)
    np.testing.assert_allclose(g, jax.grad(lambda x: jnp.sum(_xla(x, w) ** 2))(x), rtol=1e-5)


def test_falls_back_without_compiler(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))     # no cached build to reuse
    cpu_gemm.available.cache_clear()
    try:
        assert not cpu_gemm.available()         # (without MKL it stops even earlier: also a fallback)
        assert "using XLA's dot" in capsys.readouterr().err
    finally:
        cpu_gemm.available.cache_clear()
