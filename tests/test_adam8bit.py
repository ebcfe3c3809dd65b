"""8-bit optimizer state (train.optim.name=adamw8bit): block-wise quantization, trajectories
close to fp32 AdamW, ~4x smaller state, codes sharded as their parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from janusflow.train import blockwise_quant as bq
from janusflow.train.adam8bit import adamw_8bit, state_bytes


def test_code_books_and_blocks():
    assert len(bq.SIGNED) == 255 and len(bq.UNSIGNED) == 256
    assert np.all(np.diff(bq.SIGNED) > 0) and np.all(np.diff(bq.UNSIGNED) > 0)
    assert bq.SIGNED[0] == -1 and bq.SIGNED[-1] == 1 and bq.UNSIGNED[0] == 0 and bq.UNSIGNED[-1] == 1
    # dynamic: resolves values down to ~1e-7 of the block maximum
    assert 0 < bq.UNSIGNED[1] <= 1e-6
    assert [bq.block_size(n) for n in (2048, 5632, 768, 4096, 7)] == [2048, 1408, 768, 2048, 7]


def test_quantize_round_trip():
    x = jax.random.normal(jax.random.key(0), (16, 5632)) * jnp.logspace(-4, 0, 16)[:, None]
    q = bq.quantize(x, bq.SIGNED)
    assert q.codes.dtype == jnp.uint8 and q.codes.shape == x.shape and q.scales.shape == (16, 4)
    y = bq.dequantize(q, bq.SIGNED)
    blocks = np.abs(np.asarray(x)).reshape(16, 4, 1408).max(-1)
    err = np.abs(np.asarray(y - x)).reshape(16, 4, 1408).max(-1)
    # the coarsest step of the book is 0.9/64 of the block maximum: half of it at most
    assert np.all(err <= 0.5 * 0.9 / 64 * blocks + 1e-12)
    assert float(jnp.mean(jnp.abs(y - x) / jnp.abs(x))) < 0.03
    # a positive second moment never reads back as 0 (Adam would divide by eps)
    v = jnp.concatenate([jnp.full((1, 4095), 1e-12), jnp.ones((1, 1))], axis=1)
    qv = bq.quantize(v, bq.UNSIGNED)
    assert float(bq.dequantize(qv, bq.UNSIGNED).min()) > 0


def _regression(opt, steps=300):
    a = jax.random.normal(jax.random.key(1), (256, 128))
    target = a @ jax.random.normal(jax.random.key(2), (128, 64))

    def loss(p):
        return jnp.mean((a @ p["w"] + p["b"] - target) ** 2)
    params = {"w": jnp.zeros((128, 64)), "b": jnp.zeros((64,))}
    state = opt.init(params)

    @jax.jit
    def step(p, s):
        value, g = jax.value_and_grad(loss)(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, value
    out = []
    for _ in range(steps):
        params, state, value = step(params, state)
        out.append(float(value))
    return np.array(out), state


def test_adamw8bit_follows_fp32_adamw_with_a_quarter_of_the_state():
    ref, ref_state = _regression(optax.adamw(1e-2, b1=0.9, b2=0.95, weight_decay=1e-4))
    q, q_state = _regression(adamw_8bit(1e-2, b1=0.9, b2=0.95, weight_decay=1e-4))
    print("loss fp32 / 8-bit at steps 0, 50, 100, 299:", ref[[0, 50, 100, 299]], q[[0, 50, 100, 299]])
    assert ref[-1] < 1e-3 * ref[0]                       # the problem is solved by fp32 AdamW
    assert np.max(np.abs(q - ref) / ref) < 0.3           # and followed step by step by 8-bit
    assert q[-1] < 2e-3 * q[0]
    # the 8192-value matrix's moments are uint8 codes; the 64-value bias keeps fp32 moments
    inner = q_state[0]
    assert inner.mu["w"].dtype == jnp.uint8 and inner.nu["w"].dtype == jnp.uint8
    assert inner.mu["b"].dtype == jnp.float32
    ratio = state_bytes(ref_state) / state_bytes(q_state)
    print(f"state bytes fp32 AdamW / 8-bit: {state_bytes(ref_state)} / {state_bytes(q_state)} = {ratio:.2f}")
    assert ratio > 3.5
    # a large matrix alone: 2 bytes + 2 scales per 2048 values against 8 bytes
    big = {"w": jnp.zeros((1024, 2048))}
    ratio = state_bytes(optax.adamw(1e-3).init(big)) / state_bytes(adamw_8bit(1e-3).init(big))
    assert ratio == pytest.approx(4.0, rel=0.01)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_8bit_codes_are_sharded_as_their_parameters():
    import dataclasses

    from janusflow.configs import presets
    from janusflow.configs.schema import ExperimentConfig, MeshConfig, OptimConfig, TrainConfig
    from janusflow.parallel.mesh import make_mesh
    from janusflow.train.state import state_shardings
    cfg = ExperimentConfig(name="t", model=dataclasses.replace(presets.tiny(), param_dtype="bfloat16"), seq_len=256,
                           train=TrainConfig(stage=2, optim=OptimConfig(name="adamw8bit"),
                                             mesh=MeshConfig(data=1, fsdp=8)))
    mesh = make_mesh(cfg.train.mesh, devices=jax.devices()[:8])
    _, abstract, sh = state_shardings(cfg, mesh)
    inner = sh.opt_state[1][0]            # fp32_math(chain(clip, chain(adam8bit, ...)))
    codes = inner.mu["language_model"]["embed_tokens"]
    param = sh.params["language_model"]["embed_tokens"]
    assert codes == param and any(a is not None for a in param.spec)     # really sharded
    assert abstract.opt_state[1][0].mu["language_model"]["embed_tokens"].dtype == jnp.uint8
    assert all(s is None for s in inner.mu_scale["language_model"]["embed_tokens"].spec)


def test_nearest_code_is_the_brute_force_nearest():
    """The elementwise index (band from log10, place from the band's step, then the two
    neighbours) picks the same code as an argmin over the whole book, at codes, just either
    side of midpoints, and over nine decades of magnitude."""
    for book in (bq.SIGNED, bq.UNSIGNED):
        mids = (book[1:] + book[:-1]) / 2
        lo = -1.0 if book[0] < 0 else 0.0
        sign = jnp.sign(jax.random.normal(jax.random.key(2), (20000,))) if lo < 0 else 1.0
        x = jnp.concatenate([jnp.asarray(book), jnp.asarray(mids * 1.0001), jnp.asarray(mids * 0.9999),
                             jax.random.uniform(jax.random.key(0), (20000,), minval=lo, maxval=1) ** 5,
                             10.0 ** jax.random.uniform(jax.random.key(1), (20000,), minval=-9, maxval=0) * sign])
        x = np.asarray(jnp.clip(x, book[0], 1))
        want = np.argmin(np.abs(x[:, None] - book[None, :]), axis=1)
        np.testing.assert_array_equal(np.asarray(bq.nearest_code(jnp.asarray(x), book)), want)


def test_chunked_update_equals_the_whole_tensor_update(monkeypatch):
    """Big tensors updated a chunk of their leading axis at a time (stacked layers [layers, in,
    out], an embedding's rows, 4-axis kernels) give bit for bit the whole-tensor update and
    state, over steps whose gradients change scale along the leading axis (each chunk's blocks
    are its own); small tensors keep fp32 moments and the plain path."""
    from janusflow.train import chunked
    from janusflow.train.adam8bit import scale_by_adam_8bit
    monkeypatch.setattr(chunked, "MAX_VALUES", 4096)      # chunk the test's small tensors
    assert [chunked.chunk_count(s, 4096) for s in ((3, 16, 2816), (64, 128), (2, 2, 8, 300), (7, 4096))] == [3, 2, 2, 7]
    params = {"stack": jnp.zeros((3, 16, 2816)), "conv": jnp.zeros((2, 2, 8, 300)),
              "embed": jnp.zeros((64, 128)), "bias": jnp.zeros((5,))}
    by_chunk, whole = scale_by_adam_8bit(0.9, 0.95, chunked=True), scale_by_adam_8bit(0.9, 0.95, chunked=False)
    s_chunk, s_whole = by_chunk.init(params), whole.init(params)
    for i in range(4):
        grads = jax.tree.map(lambda p: jax.random.normal(jax.random.fold_in(jax.random.key(3), i), p.shape)
                             * 10.0 ** -jnp.arange(p.shape[0]).reshape((-1,) + (1,) * (p.ndim - 1)), params)
        u_chunk, s_chunk = jax.jit(by_chunk.update)(grads, s_chunk)
        u_whole, s_whole = jax.jit(whole.update)(grads, s_whole)
        for a, b in zip(jax.tree.leaves((u_chunk, s_chunk)), jax.tree.leaves((u_whole, s_whole))):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert s_chunk.mu["stack"].dtype == jnp.uint8 and s_chunk.mu_scale["stack"].shape == (3, 16, 2)
    # the big tensors really go through a loop over their chunks (one chunk's copies live)
    hlo = jax.jit(by_chunk.update).lower(grads, s_chunk).as_text()
    assert hlo.count("stablehlo.while") == 3 and "while" not in jax.jit(whole.update).lower(grads, s_whole).as_text()
