import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from janusflow.configs import presets
from janusflow.checkpoint.torch_layout import export_state_dict, load_state_dict
from janusflow.checkpoint.key_maps import llm_key_map as torch_key_map
from janusflow.models.llm import LLM, KVCache
from janusflow.models.layer_stack import layer

CFG = presets.tiny().llm


@pytest.fixture(scope="module")
def model():
    return LLM(CFG, rngs=nnx.Rngs(0))


def _ids(b, t, seed=1):
    return jax.random.randint(jax.random.key(seed), (b, t), 0, CFG.vocab_size)


def test_shapes_and_dtypes(model):
    ids = _ids(2, 9)
    out = model(model.embed(ids), collect=(0, 2, CFG.num_layers))
    assert out.hidden.shape == (2, 9, CFG.hidden_size) and out.hidden.dtype == jnp.float32
    assert sorted(out.layers) == [0, 2, CFG.num_layers]
    assert model.logits(out.hidden).shape == (2, 9, CFG.vocab_size)
    bf = LLM(CFG, rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
    o = bf(bf.embed(ids))
    assert o.hidden.dtype == jnp.bfloat16
    # master weights stay fp32
    assert layer(bf.layers, 0).mlp.up_proj.kernel[...].dtype == jnp.float32


def test_every_param_has_axes(model):
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        axes = var.get_metadata().get("axes")
        assert axes is not None and len(axes) == var[...].ndim, path


def test_causal(model):
    ids = _ids(2, 12)
    base = model(model.embed(ids)).hidden
    changed = model(model.embed(ids.at[:, 8].set((ids[:, 8] + 1) % CFG.vocab_size))).hidden
    np.testing.assert_array_equal(np.asarray(base[:, :8]), np.asarray(changed[:, :8]))
    assert np.abs(np.asarray(base[:, 8:] - changed[:, 8:])).max() > 1e-3


def test_padding_mask_hides_positions(model):
    ids = _ids(1, 10)
    mask = jnp.ones((1, 10), bool).at[:, 3].set(False)
    a = model(model.embed(ids), attention_mask=mask).hidden
    b = model(model.embed(ids.at[:, 3].set(7)), attention_mask=mask).hidden
    # position 3 is masked: nothing else may depend on its content
    keep = np.r_[0:3, 4:10]
    np.testing.assert_allclose(np.asarray(a[:, keep]), np.asarray(b[:, keep]), atol=1e-6)


def test_kv_cache_matches_full_forward(model):
    ids = _ids(2, 14)
    full = model(model.embed(ids), collect=(1,))
    cache = KVCache.init(CFG, 2, 20)
    pre = model(model.embed(ids[:, :9]), cache=cache, start=0)
    outs = [pre.hidden]
    c = pre.cache
    for i in range(9, 14):  # token-by-token decoding
        o = model(model.embed(ids[:, i:i + 1]), cache=c, start=i)
        outs.append(o.hidden)
        c = o.cache
    np.testing.assert_allclose(np.concatenate(outs, 1), np.asarray(full.hidden), atol=1e-5)
    # the same prefix cache reused twice with a traced start position (the sampler's pattern)
    step = jax.jit(lambda e, c, s: model(e, cache=c, start=s).hidden)
    e = model.embed(ids[:, 9:14])
    np.testing.assert_allclose(step(e, pre.cache, 9), np.asarray(full.hidden[:, 9:]), atol=1e-5)
    np.testing.assert_allclose(step(e, pre.cache, 9), step(e, pre.cache, 9))


@pytest.mark.parametrize("scan", [False, True])
def test_per_layer_kv_cache_equals_the_stacked_one(model, scan):
    """#26: KVCache.init(per_layer=True) (one buffer per layer, updated in place by the unrolled
    decoder) holds and returns what the stacked cache does; a partial pass (stop_after) keeps
    the other layers' buffers; the scanned model takes it too."""
    m = model
    if scan:
        from janusflow.checkpoint.torch_layout import flat_params, flush
        m = LLM(CFG, rngs=nnx.Rngs(5), scan=True)
        src, dst = flat_params(model), flat_params(m)
        for k, v in dst.items():
            v.set_value(src[k].get_value())
        flush(dst)
    ids = _ids(2, 12)

    def run(per_layer):
        c = KVCache.init(CFG, 2, 16, per_layer=per_layer)
        pre = m(m.embed(ids[:, :8]), cache=c, start=0)
        part = m(m.embed(ids[:, 8:9]), cache=pre.cache, start=8, stop_after=1)
        outs, c = [], pre.cache
        for i in range(8, 12):
            o = m(m.embed(ids[:, i:i + 1]), cache=c, start=i)
            outs.append(o.hidden)
            c = o.cache
        return jnp.concatenate(outs, 1), c, part.cache

    run = jax.jit(run, static_argnums=0)
    h0, c0, p0 = run(False)
    h1, c1, p1 = run(True)
    assert c1.per_layer and isinstance(c1.k, tuple) and len(c1.k) == CFG.num_layers and not c0.per_layer
    assert c1.max_len == c0.max_len == 16
    np.testing.assert_array_equal(np.asarray(h1), np.asarray(h0))
    for cache_a, cache_b in ((c0, c1), (p0, p1)):
        np.testing.assert_array_equal(np.stack(cache_b.k), np.asarray(cache_a.k))
        np.testing.assert_array_equal(np.stack(cache_b.v), np.asarray(cache_a.v))
        np.testing.assert_array_equal(np.asarray(cache_b.valid), np.asarray(cache_a.valid))


def test_bad_input(model):
    with pytest.raises(ValueError, match="exceeds the model context"):
        model(jnp.zeros((1, CFG.max_position_embeddings + 1, CFG.hidden_size)))
    with pytest.raises(ValueError, match=r"embeds must be \(batch, length, 64\)"):
        model(jnp.zeros((1, 4, 32)))
    with pytest.raises(ValueError, match="KV cache length"):
        KVCache.init(CFG, 1, CFG.max_position_embeddings + 1)
    with pytest.raises(ValueError, match="exceeds the KV cache length"):
        model(jnp.zeros((1, 5, CFG.hidden_size)), cache=KVCache.init(CFG, 1, 8), start=4)


def test_parity_with_transformers_llama():
    torch = pytest.importorskip("torch", reason="torch not installed: LLM parity not checked")
    transformers = pytest.importorskip("transformers", reason="transformers not installed")
    cfg = dataclasses.replace(CFG, rope_theta=500.0, rms_norm_eps=1e-5)
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        rms_norm_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=False,
        attention_bias=False, mlp_bias=False)
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    ref = transformers.LlamaForCausalLM(hf_cfg).eval()
    with torch.no_grad():  # randomise norms too so a wrong norm layout cannot pass
        for n, p in ref.named_parameters():
            if "norm" in n:
                p.copy_(1 + 0.3 * torch.randn_like(p))
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    ours = LLM(cfg, rngs=nnx.Rngs(3))
    load_state_dict(ours, sd, torch_key_map(cfg))
    ids = np.random.RandomState(0).randint(0, cfg.vocab_size, (2, 13))
    with torch.no_grad():
        r = ref(torch.tensor(ids), output_hidden_states=True)
    o = ours(ours.embed(jnp.asarray(ids)), collect=tuple(range(cfg.num_layers)))
    for i in range(cfg.num_layers):  # HF hidden_states[i] = after block i; the last is normed
        np.testing.assert_allclose(np.asarray(o.layers[i]), r.hidden_states[i].numpy(), atol=1e-4)
    np.testing.assert_allclose(np.asarray(o.hidden), r.hidden_states[-1].numpy(), atol=1e-4)
    np.testing.assert_allclose(np.asarray(ours.logits(o.hidden)), r.logits.numpy(), atol=1e-4)
    # export gives back exactly the torch state dict
    back = export_state_dict(ours, torch_key_map(cfg))
    assert set(back) == set(sd)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k])
