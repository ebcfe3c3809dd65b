"""Attention kernels (models/attention.py): splash's segment-id masks equal the boolean masks
the models build, and the splash kernel (Pallas interpret mode on CPU) computes what the XLA
path computes, unsharded, sharded over batch and heads, and inside the LLM and SigLIP."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from janusflow.configs import presets
from janusflow.configs.schema import ConfigError, ExperimentConfig, ModelConfig, TrainConfig
from janusflow.models.attention import (LANES, VIT_AXES, CausalPaddingMask, attend,
                                        segment_ids, splash_interpret)
from janusflow.models.llm import LLM, KVCache
from janusflow.models.siglip import SiglipVisionTower
from janusflow.objectives.cfg_dropout import uncond_prompt_mask

T = 20


def _rows(*rows):
    return jnp.asarray(np.stack(rows), bool)


def _mask_kinds():
    """Every key mask the model builds without a KV cache, as (name, valid (B, T))."""
    pos = np.arange(T)
    prompt = 8                                      # gen rows: left-padded prompt, then t_emb + image
    gen_prompt = _rows(np.arange(prompt) >= 3, np.arange(prompt) >= 0)
    gen = jnp.concatenate([gen_prompt, jnp.ones((2, T - prompt), bool)], axis=1)
    cfg = jnp.concatenate([uncond_prompt_mask(gen_prompt), jnp.ones((2, T - prompt), bool)], axis=1)
    return [
        ("full rows", _rows(pos >= 0, pos >= 0)),
        ("right-padded (und, text)", _rows(pos < 13, pos < 1)),
        ("left-padded gen prompt + image block", gen),
        ("CFG-dropped prompt (BOS kept, holes)", cfg),
        ("one row all hidden", _rows(pos < 0, pos < 17)),
    ]


def _segment_mask(seg, causal=True):
    """What the splash kernel attends to: its static mask and equal segment ids."""
    t = seg.shape[1]
    static = np.tril(np.ones((t, t), bool)) if causal else np.ones((t, t), bool)
    return static[None] & (np.asarray(seg)[:, :, None] == np.asarray(seg)[:, None, :])


@pytest.mark.parametrize("name,valid", _mask_kinds(), ids=[k for k, _ in _mask_kinds()])
def test_segment_ids_equal_the_boolean_masks(name, valid):
    dense = np.asarray(CausalPaddingMask(valid).dense())[:, 0]
    np.testing.assert_array_equal(_segment_mask(segment_ids(valid)), dense, err_msg=name)
    # splash pads the length to whole tiles with hidden positions: the real block is unchanged
    # and each padding position sees only itself
    padded = jnp.pad(valid, ((0, 0), (0, LANES - T)))
    big = _segment_mask(segment_ids(padded))
    np.testing.assert_array_equal(big[:, :T, :T], dense, err_msg=name)
    assert not big[:, :T, T:].any() and not big[:, T:, :T].any()
    np.testing.assert_array_equal(big[:, T:, T:], np.broadcast_to(np.eye(LANES - T, dtype=bool), big[:, T:, T:].shape))


def test_segment_ids_equal_the_full_mask_of_siglip():
    padded = jnp.pad(jnp.ones((2, T), bool), ((0, 0), (0, LANES - T)))
    big = _segment_mask(segment_ids(padded), causal=False)
    assert big[:, :T, :T].all() and not big[:, :T, T:].any()


def test_hidden_positions_are_isolated():
    """A hidden position sees only itself (what makes the mask a segment-id mask) and nothing
    sees it."""
    valid = _rows(np.arange(T) < 13)
    m = np.asarray(CausalPaddingMask(valid).dense())[0, 0]
    np.testing.assert_array_equal(m[13:], np.eye(T, dtype=bool)[13:])
    assert not m[:13, 13:].any()
    np.testing.assert_array_equal(m[:13, :13], np.tril(np.ones((13, 13), bool)))


def _qkv(b=2, t=T, h=4, k=2, hd=16, seed=0):
    r = np.random.default_rng(seed)
    return tuple(jnp.asarray(r.normal(size=s), jnp.float32)
                 for s in ((b, t, h, hd), (b, t, k, hd), (b, t, k, hd)))


def _loss(impl, mask):
    # a fixed random cotangent so every output element reaches the gradients
    w = jnp.asarray(np.random.default_rng(9).normal(size=(2, T, 4, 16)), jnp.float32)
    return lambda q, k, v: (attend(q, k, v, mask, impl) * w).sum()


@pytest.mark.parametrize("kind", [1, 3])          # right-padded rows; CFG rows with holes
def test_splash_equals_xla_forward_and_gradients(kind):
    q, k, v = _qkv()
    mask = CausalPaddingMask(_mask_kinds()[kind][1])
    ref = attend(q, k, v, mask, "xla")
    g_ref = jax.grad(_loss("xla", mask), argnums=(0, 1, 2))(q, k, v)
    with splash_interpret():
        out = attend(q, k, v, mask, "splash")
        g = jax.grad(_loss("splash", mask), argnums=(0, 1, 2))(q, k, v)
    np.testing.assert_allclose(out, ref, atol=2e-5)
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(a, b, atol=5e-5)


def test_splash_full_attention_equals_xla():
    q, k, v = _qkv(h=2, k=2)
    with splash_interpret():
        out = attend(q, k, v, None, "splash", VIT_AXES)
    np.testing.assert_allclose(out, attend(q, k, v, None, "xla"), atol=2e-5)


@pytest.mark.parametrize("kv_heads", [2, 1])      # heads split over 'tensor'; MQA: heads kept whole
def test_splash_per_shard_equals_xla(kv_heads):
    """Under the train step's activation sharding splash runs per shard (shard_map over the
    batch and head axes); the result is the unsharded XLA one."""
    from janusflow.parallel.rules import activation_sharding
    mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(1, 4, 2), ("data", "fsdp", "tensor"))
    q, k, v = _qkv(b=4, k=kv_heads)
    valid = jnp.concatenate([_mask_kinds()[1][1], _mask_kinds()[3][1]])
    mask = CausalPaddingMask(valid)

    @jax.jit
    def f(q, k, v, valid):
        with activation_sharding(mesh):
            return attend(q, k, v, CausalPaddingMask(valid), "splash")
    put = lambda x: jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp"))))   # noqa: E731
    with splash_interpret():
        out = f(put(q), put(k), put(v), put(valid))
        hlo = f.lower(put(q), put(k), put(v), put(valid)).as_text()
    np.testing.assert_allclose(out, attend(q, k, v, mask, "xla"), atol=2e-5)
    assert "shard_map" in hlo or "sdy.manual_computation" in hlo


def test_splash_refuses_other_devices_and_length_sharding():
    q, k, v = _qkv()
    with pytest.raises(ConfigError, match="splash' is a TPU kernel; these devices are cpu"):
        attend(q, k, v, CausalPaddingMask(jnp.ones((2, T), bool)), "splash")
    with pytest.raises(ConfigError, match="ModelConfig.attention_impl"):
        ModelConfig(attention_impl="flash")
    splash = dataclasses.replace(presets.tiny(), attention_impl="splash")
    with pytest.raises(ConfigError, match="TrainConfig.activation_rules.*shards the sequence"):
        ExperimentConfig(model=splash, seq_len=512, train=TrainConfig(activation_rules=(("length", "tensor"),)))
    ExperimentConfig(model=splash, seq_len=512, train=TrainConfig(activation_rules=(("mlp", None),)))


@pytest.fixture(scope="module")
def llms():
    cfg = dataclasses.replace(presets.tiny().llm, num_layers=1)
    return (LLM(cfg, rngs=nnx.Rngs(0)), LLM(cfg, rngs=nnx.Rngs(0), attention_impl="splash"))


def test_llm_with_splash_equals_xla(llms):
    xla, splash = llms
    ids = jax.random.randint(jax.random.key(1), (2, T), 0, xla.cfg.vocab_size)
    valid = _mask_kinds()[3][1]                      # left padding and CFG holes
    ref = xla(xla.embed(ids), attention_mask=valid).hidden
    with splash_interpret():
        out = splash(splash.embed(ids), attention_mask=valid).hidden
    np.testing.assert_allclose(out, ref, atol=5e-5)


def test_llm_kv_cache_path_stays_on_xla_under_splash(llms):
    """Prefill and decoding pass a dense mask over the cache: XLA runs them, on any device."""
    xla, splash = llms
    ids = jax.random.randint(jax.random.key(2), (2, 6), 0, xla.cfg.vocab_size)
    valid = jnp.ones((2, 6), bool).at[1, :2].set(False)
    cache = KVCache.init(xla.cfg, 2, 8)
    ref = xla(xla.embed(ids), attention_mask=valid, cache=cache).hidden
    out = splash(splash.embed(ids), attention_mask=valid, cache=cache).hidden   # no interpret mode
    np.testing.assert_allclose(out, ref, atol=1e-6)


def test_siglip_with_splash_equals_xla():
    cfg = dataclasses.replace(presets.tiny().siglip, num_layers=1)
    xla = SiglipVisionTower(cfg, rngs=nnx.Rngs(0))
    splash = SiglipVisionTower(cfg, rngs=nnx.Rngs(0), attention_impl="splash")
    x = jax.random.normal(jax.random.key(3), (2, cfg.image_size, cfg.image_size, 3))
    with splash_interpret():
        out = splash(x)
    np.testing.assert_allclose(out, xla(x), atol=5e-5)
