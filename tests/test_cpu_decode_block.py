"""The LLM block as one custom call for a decoding step (``kernels/cpu_decode_block.py``): the
same outputs and cache as the block's separate calls (products on the packed kernel, the
decode-attention kernel, XLA's small ops), used only where it applies, the cache written in
place inside the sampler's loop, and clear refusals."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from janusflow.configs import presets
from janusflow.kernels import cpu_decode_block as kblock
from janusflow.models.layers import use_matmul
from janusflow.models.llm import KVCache, use_attention


# the share of a block step's outputs equal to XLA's bit for bit (all of them on these blocks;
# the kernel's exp and sum order may move a rare value by one bf16 step)
EXACT = 0.99


def _kernel_or_skip():
    if not kblock.available():
        pytest.skip("the AVX-512 decoding kernels did not build or cannot run here (see stderr)")


def _packed_tiny(pack=True):
    from janusflow.perf.bench_official import bf16_params
    from janusflow.perf.bench_sample import random_model
    from janusflow.sample.generate import with_compute_dtype
    from janusflow.sample.layout import decoding_layout
    cfg = presets.tiny_janus_pro(scan_layers=False)
    model, cfg = with_compute_dtype(random_model(cfg, std=0.3), cfg, "bfloat16")
    out, ocfg = decoding_layout(bf16_params(model), cfg, pack=pack)
    use_matmul(out, "gemv")
    return out, ocfg


def _f32(a):
    return np.asarray(jnp.asarray(a, jnp.float32))


def _block_step(blk, impl, x, ck, cv, start, valid):
    use_attention(blk, impl)
    g, st = nnx.split(blk)
    b = x.shape[0]
    pos = jnp.full((b, 1), start)
    f = jax.jit(lambda st, x, ck, cv: nnx.merge(g, st)(x, pos, valid[:, None, None, :], (ck, cv), start))
    text = f.lower(st, x, ck, cv).as_text()
    y, (k2, v2) = f(st, x, ck, cv)
    return (_f32(y), _f32(k2), _f32(v2)), text


@pytest.mark.parametrize("rows,start,masked", [(2, 7, ()), (3, 11, (2, 5)), (1, 0, ()), (16, 9, (0,))])
def test_one_step_of_a_block_equals_its_separate_calls(rows, start, masked):
    _kernel_or_skip()
    model, cfg = _packed_tiny()
    blk = model.language_model.layers[1]
    s, kv, hd = 16, cfg.llm.num_kv_heads, cfg.llm.dim_per_head
    keys = jax.random.split(jax.random.key(rows), 3)
    x = jax.random.normal(keys[0], (rows, 1, cfg.llm.hidden_size)).astype(jnp.bfloat16)
    ck = jax.random.normal(keys[1], (rows, s, kv, hd)).astype(jnp.bfloat16)
    cv = jax.random.normal(keys[2], (rows, s, kv, hd)).astype(jnp.bfloat16)
    valid = jnp.broadcast_to(jnp.arange(s) <= start, (rows, s))
    for p in masked:                                         # e.g. a CFG row's padded prompt
        valid = valid.at[-1, p].set(False)
    ref, ref_text = _block_step(blk, "cpu_decode", x, ck, cv, start, valid)
    got, text = _block_step(blk, "cpu_block", x, ck, cv, start, valid)
    assert kblock.TARGET in text and kblock.TARGET not in ref_text
    for name, a, b in zip(("x", "k", "v"), got, ref):
        # the kernel follows the roundings XLA compiles the block to (bf16 ulp = 2^-8)
        np.testing.assert_allclose(a, b, rtol=2 ** -7, atol=1e-6 * np.abs(b).max(), err_msg=name)
        assert np.mean(a == b) >= EXACT, (name, np.mean(a == b))
    untouched = np.arange(s) != start                         # only the new position is written
    np.testing.assert_array_equal(got[1][:, untouched], _f32(ck)[:, untouched])
    np.testing.assert_array_equal(got[2][:, untouched], _f32(cv)[:, untouched])


def test_decoding_steps_of_the_llm_match_and_only_steps_use_it():
    _kernel_or_skip()
    model, cfg = _packed_tiny()
    llm = model.language_model
    b, t, s = 2, 5, 12
    emb = jax.random.normal(jax.random.key(0), (b, t + 3, cfg.llm.hidden_size)).astype(jnp.bfloat16)
    mask = jnp.ones((b, t), bool).at[1, 1:3].set(False)
    res = {}
    for impl in ("cpu_decode", "cpu_block"):
        use_attention(llm, impl)
        g, st = nnx.split(llm)

        def run(st, emb):
            m = nnx.merge(g, st)
            o = m(emb[:, :t], attention_mask=mask, cache=KVCache.init(cfg.llm, b, s, jnp.bfloat16, per_layer=True))
            cache, outs = o.cache, []
            for i in range(3):
                o = m(emb[:, t + i:t + i + 1], start=t + i, cache=cache)
                cache = o.cache
                outs.append(o.hidden)
            return jnp.concatenate(outs, 1), cache.k + cache.v
        text = jax.jit(run).lower(st, emb).as_text()
        res[impl] = jax.jit(run)(st, emb)
        # the prompt (5 positions) on the separate calls, each of the 3 steps one call per block
        calls = text.count(kblock.TARGET)
        assert calls == (3 * cfg.llm.num_layers if impl == "cpu_block" else 0), (impl, calls)
    (h0, c0), (h1, c1) = res["cpu_decode"], res["cpu_block"]
    # over steps and layers XLA keeps the residual stream in fp32 between blocks, the kernel
    # rounds it to bf16 at each block's end (the model's dtype): close, not equal
    assert np.linalg.norm(_f32(h1) - _f32(h0)) <= 3e-2 * np.linalg.norm(_f32(h0))
    for a, r in zip(c1, c0):
        assert np.linalg.norm(_f32(a) - _f32(r)) <= 3e-2 * np.linalg.norm(_f32(r))


def test_unpacked_blocks_keep_the_separate_calls():
    _kernel_or_skip()
    model, cfg = _packed_tiny(pack=False)
    blk = model.language_model.layers[0]
    assert blk.packed_weights() is None
    x = jnp.ones((2, 1, cfg.llm.hidden_size), jnp.bfloat16)
    c = jnp.zeros((2, 8, cfg.llm.num_kv_heads, cfg.llm.dim_per_head), jnp.bfloat16)
    _, text = _block_step(blk, "cpu_block", x, c, c, 3, jnp.ones((2, 8), bool))
    assert kblock.TARGET not in text and "janusflow_decode_attention" in text


def test_the_sampler_loop_writes_the_cache_in_place():
    """No copy of a layer's cache per token: the call's cache results alias its operands."""
    _kernel_or_skip()
    from janusflow.sample.ar_generate import image_keys, sample_codes
    from janusflow.sample.layout import decoding_model
    model, cfg = _packed_tiny()
    view, dcfg = decoding_model(model, cfg)
    assert dcfg.attention_impl == "cpu_block"
    g, st = nnx.split(view)
    ids, mask = jnp.ones((1, 8), jnp.int32), jnp.ones((1, 8), bool)
    args = (g, st, ids, mask, image_keys(0, [0]), jnp.float32(5), jnp.float32(1), jnp.int32(0))
    text = sample_codes.lower(*args, num_tokens=6).compile().as_text()
    cache = f"bf16[2,14,{cfg.llm.num_kv_heads},{cfg.llm.dim_per_head}]"
    # inside the token loop's body a cache only passes through: read from the loop's tuple and
    # the call's results, never made by a copy or a fusion
    bodies = []
    for name in re.findall(r"body=(%[\w.-]+)", text):
        start = text.index(f"\n{name} ")
        bodies.append(text[start:text.index("\n}\n", start)])
    body_text = next(t for t in bodies if kblock.TARGET in t)     # the token loop's
    ops = {m.group(1) for m in re.finditer(re.escape(cache) + r"\{[\d,]*\} ([\w-]+)\(", body_text)}
    assert ops == {"get-tuple-element"} or ops == {"get-tuple-element", "parameter"}, ops
    assert text.count(f'custom_call_target="{kblock.TARGET}"') == cfg.llm.num_layers
    codes = np.asarray(sample_codes(*args, num_tokens=6))
    assert codes.shape == (1, 6) and codes.min() >= 0 and codes.max() < cfg.vq.codebook_size


def test_the_handler_refuses_bad_operands():
    _kernel_or_skip()
    model, cfg = _packed_tiny()
    blk = model.language_model.layers[0]
    w = blk.packed_weights()
    d, kv, hd = cfg.llm.hidden_size, cfg.llm.num_kv_heads, cfg.llm.dim_per_head
    x = jnp.ones((2, 1, d), jnp.bfloat16)
    c = jnp.zeros((2, 8, kv, hd), jnp.bfloat16)
    ones = jnp.ones((d,))
    cos = jnp.ones((2, hd))
    kw = dict(eps=1e-6, heads=cfg.llm.num_heads)
    with pytest.raises(Exception, match="start is outside the cache"):
        jax.block_until_ready(kblock.block(x, ones, ones, cos, cos, jnp.ones((2, 8), bool), 8, c, c, w, **kw))
    with pytest.raises(Exception, match="expected 7 packed weights"):
        jax.block_until_ready(kblock.block(x, ones, ones, cos, cos, jnp.ones((2, 8), bool), 1, c, c, w[:6], **kw))
    with pytest.raises(Exception, match="weight q: shapes do not match"):
        jax.block_until_ready(kblock.block(x, ones, ones, cos, cos, jnp.ones((2, 8), bool), 1, c, c, w,
                                           eps=1e-6, heads=cfg.llm.num_kv_heads))
    with pytest.raises(Exception, match="heads, key/value heads"):
        jax.block_until_ready(kblock.block(x, ones, ones, cos, cos, jnp.ones((2, 8), bool), 1, c, c, w,
                                           eps=1e-6, heads=2 ** 62))
    with pytest.raises(Exception, match="caches' shapes differ"):
        jax.block_until_ready(kblock.block(x, ones, ones, cos, cos, jnp.ones((2, 8), bool), 1, c,
                                           jnp.zeros((2, 4, 2 * kv, hd), jnp.bfloat16), w, **kw))
    swapped = [w[0], w[1], w[2], w[3], w[6], w[5], w[4]]          # gate and down exchanged
    with pytest.raises(Exception, match="weight gate: shapes do not match"):
        jax.block_until_ready(kblock.block(x, ones, ones, cos, cos, jnp.ones((2, 8), bool), 1, c, c, swapped, **kw))


def test_the_decoding_kernels_build_wherever_they_can():
    """Every kernel test skips when the library does not build, so a compile error would pass
    CI silently: on a machine with g++ and AVX-512 F/BW, building must succeed."""
    import shutil

    from janusflow.kernels import build
    flags = open("/proc/cpuinfo").read() if jax.default_backend() == "cpu" else ""
    if not (shutil.which("g++") and " avx512f" in flags and " avx512bw" in flags):
        pytest.skip("no g++ or no AVX-512 F/BW here: the kernels cannot build")
    build.compile_library("cpu_decoding_kernels", build.DECODING_KERNELS, build.AVX512)   # raises with the error
    assert kblock.available()
