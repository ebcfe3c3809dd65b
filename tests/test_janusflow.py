"""The composed model on tiny configs, the ablation variants, and the 1.3B parameter counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from janusflow.configs import presets
from janusflow.configs.schema import ConfigError
from janusflow.perf.info import param_counts
from janusflow.models.janusflow import JanusFlow
from janusflow.models.llm import KVCache
from janusflow.models.siglip import normalize

CFG = presets.tiny()
B, L = 2, 7


@pytest.fixture(scope="module")
def model():
    return JanusFlow(CFG, rngs=nnx.Rngs(0))


def _gen_inputs(cfg, seed=0):
    k = jax.random.split(jax.random.key(seed), 3)
    ids = jax.random.randint(k[0], (B, L), 0, cfg.llm.vocab_size)
    z = jax.random.normal(k[1], (B, cfg.latent_size, cfg.latent_size, cfg.vae.channels))
    t = jax.random.uniform(k[2], (B,))
    return ids, z, t


def _und_inputs(cfg, seed=1):
    n = 1 + cfg.num_und_tokens
    ids = jax.random.randint(jax.random.key(seed), (B, n + 6), 0, cfg.llm.vocab_size)
    image_mask = jnp.zeros(ids.shape, bool).at[:, 3:3 + n].set(True)
    pixels = normalize(jax.random.uniform(jax.random.key(seed + 1), (B, cfg.image_size, cfg.image_size, 3)), cfg.siglip)
    return ids, image_mask, pixels


def test_every_param_has_logical_axes(model):
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        axes = var.get_metadata().get("axes")
        assert axes is not None and len(axes) == var[...].ndim, path


def test_generation_velocity_has_latent_shape(model):
    ids, z, t = _gen_inputs(CFG)
    out = model.generate_velocity(model.language_model.embed(ids), None, z, t, with_repa=True)
    assert out.velocity.shape == z.shape and out.velocity.dtype == jnp.float32
    assert out.repa_pred.shape == (B, CFG.num_gen_tokens, CFG.siglip.width)
    assert np.isfinite(np.asarray(out.velocity)).all()
    # the velocity depends on t (the t_emb slot and the ConvNeXt modulation)
    other = model.generate_velocity(model.language_model.embed(ids), None, z, 1 - t)
    assert np.abs(np.asarray(other.velocity - out.velocity)).max() > 1e-4


def test_prompt_cache_gives_same_velocity(model):
    ids, z, t = _gen_inputs(CFG)
    mask = jnp.ones((B, L), bool).at[1, 1:].set(False)  # an unconditional (CFG) row
    embeds = model.language_model.embed(ids)
    full = model.generate_velocity(embeds, mask, z, t).velocity
    cache = KVCache.init(CFG.llm, B, L + 1 + CFG.num_gen_tokens)
    prefix = model.language_model(embeds, attention_mask=mask, cache=cache, start=0).cache
    for _ in range(2):  # the cached prefix is reused, never consumed
        cached = model.generate_velocity(None, None, z, t, cache=prefix, start=L).velocity
        np.testing.assert_allclose(np.asarray(cached), np.asarray(full), atol=1e-5)


def test_understanding_splices_image_block(model):
    ids, image_mask, pixels = _und_inputs(CFG)
    emb = model.understanding_embeds(ids, image_mask, und_pixels=pixels)
    img = model.und_image_embeds(und_pixels=pixels)
    n = img.shape[1]
    np.testing.assert_allclose(np.asarray(emb[:, 3:3 + n]), np.asarray(img), atol=1e-6)
    np.testing.assert_allclose(np.asarray(emb[:, 0]), np.asarray(model.language_model.embed(ids)[:, 0]))
    np.testing.assert_allclose(np.asarray(img[:, 0]), np.broadcast_to(np.asarray(model.beg_of_und_embed[...]), img[:, 0].shape))
    logits = model.understanding_logits(ids, None, image_mask, und_pixels=pixels)
    assert logits.shape == ids.shape + (CFG.llm.vocab_size,)


@pytest.mark.parametrize("variant", [
    dict(und_encoder="shared_gen"),                 # Table 6 B
    dict(und_encoder="separate_gen"),               # Table 6 C
    dict(gen_enabled=False),                        # Table 6 D
    dict(und_encoder="none"),                       # Table 6 E
    dict(repa=False),                               # Table 6 A
])
def test_ablation_variants_build_and_run(variant):
    cfg = presets.tiny(**variant)
    m = JanusFlow(cfg, rngs=nnx.Rngs(1))
    ids, z, t = _gen_inputs(cfg)
    if cfg.gen_enabled:
        out = m.generate_velocity(m.language_model.embed(ids), None, z, t, with_repa=cfg.repa)
        assert out.velocity.shape == z.shape
    else:
        assert m.gen_decoder is None
    if cfg.und_encoder != "none":
        uid, umask, pixels = _und_inputs(cfg)
        latents = z if cfg.und_encoder in ("shared_gen", "separate_gen") else None
        logits = m.understanding_logits(uid, None, umask, und_pixels=pixels, und_latents=latents)
        assert logits.shape[-1] == cfg.llm.vocab_size
    else:
        assert m.und_aligner is None and m.beg_of_und_embed is None
    if variant.get("und_encoder") == "shared_gen":
        # shared: no second encoder, understanding goes through the generation encoder itself
        assert m.und_gen_encoder is None and m.und_aligner is None
        base = m.und_image_embeds(und_latents=z)
        m.gen_aligner.bias.set_value(m.gen_aligner.bias[...] + 1.0)
        assert np.abs(np.asarray(m.und_image_embeds(und_latents=z)[:, 1:] - base[:, 1:])).min() > 0.5


def test_bfloat16_compute_keeps_fp32_params():
    cfg = presets.tiny(dtype="bfloat16")
    m = JanusFlow(cfg, rngs=nnx.Rngs(0))
    ids, z, t = _gen_inputs(cfg)
    out = m.generate_velocity(m.language_model.embed(ids), None, z, t, with_repa=True)
    assert out.velocity.dtype == jnp.float32 and np.isfinite(np.asarray(out.velocity)).all()
    dtypes = {v[...].dtype for _, v in nnx.to_flat_state(nnx.state(m, nnx.Param))}
    assert dtypes == {jnp.dtype(jnp.float32)}


def test_official_1_3b_parameter_counts():
    """Counts taken from the official PyTorch modules (spec section 1); eval_shape only."""
    c = param_counts(presets.janusflow_1_3b())
    assert c["language_model"] == 1_652_656_128
    assert c["und_encoder"] == 316_283_904
    assert c["und_encoder"] - c["und_encoder.attn_pool"] == 303_688_704
    assert c["gen_encoder"] == 21_614_336
    assert c["gen_decoder"] == 50_561_296
    assert c["und_aligner"] == 2_099_200
    assert c["gen_aligner"] == 1_574_912
    assert c["gen_decoder_aligner"] == 1_573_632 and c["gen_decoder_norm"] == 2_048
    assert c["beg_of_und_embed"] == 2_048
    assert c["checkpoint_total"] == 2_046_367_504


def test_bad_inputs(model):
    ids, z, t = _gen_inputs(CFG)
    emb = model.language_model.embed(ids)
    with pytest.raises(ValueError, match="channels"):
        model.generate_velocity(emb, None, z[..., :2], t)
    with pytest.raises(ValueError, match=r"t must be \(batch,\)"):
        model.generate_velocity(emb, None, z, t[:1])
    with pytest.raises(ValueError, match="32"):
        model.und_image_embeds(und_pixels=jnp.zeros((1, 16, 16, 3)))
    long = jnp.zeros((1, CFG.llm.max_position_embeddings, CFG.llm.hidden_size))
    with pytest.raises(ValueError, match="exceeds the model context"):
        model.generate_velocity(long, None, z[:1], t[:1])
    with pytest.raises(ValueError, match="needs und_pixels"):
        model.und_image_embeds()
    with pytest.raises(ConfigError, match="unknown model preset 'huge'"):
        presets.get_preset("huge")
    with pytest.raises(ConfigError, match="REPA aligns patch by patch"):
        presets.tiny(siglip=presets.tiny().siglip.__class__(image_size=32, patch_size=8, width=32,
                                                            num_layers=2, num_heads=2))


def test_build_model_concrete_and_abstract_agree(model):
    """models/build.py: the concrete model is the one a seed's JanusFlow init gives, and the
    abstract one has the same tree of shapes and dtypes with nothing allocated."""
    from janusflow.models.build import build_model, build_vae
    built = nnx.to_pure_dict(nnx.state(build_model(CFG, seed=0), nnx.Param))
    jax.tree.map(np.testing.assert_array_equal, built, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    abstract = nnx.to_pure_dict(nnx.state(build_model(CFG, abstract=True), nnx.Param))
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract))
    shapes = jax.tree.map(lambda x: (x.shape, x.dtype), built)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), abstract) == shapes
    vae = [nnx.to_pure_dict(nnx.state(build_vae(CFG.vae, abstract=a), nnx.Param)) for a in (False, True)]
    assert jax.tree.map(lambda x: (x.shape, x.dtype), vae[0]) == jax.tree.map(lambda x: (x.shape, x.dtype), vae[1])
