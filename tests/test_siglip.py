"""SigLIP tower: shapes, depth rule, input checks, key maps, parity with transformers (timm is not a test dependency: its torchvision pulls a CUDA torch)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from janusflow.checkpoint.torch_layout import CheckpointMismatch, export_state_dict, flat_params, load_state_dict
from janusflow.configs.schema import SiglipConfig
from janusflow.checkpoint.key_maps import (export_hf_siglip, hf_siglip_key_map, hf_siglip_to_timm_state_dict,
                                           load_hf_siglip, timm_to_hf_siglip_state_dict)
from janusflow.checkpoint.key_maps import siglip_key_map as torch_key_map
from janusflow.models.siglip import SiglipVisionTower, normalize
from janusflow.models.layer_stack import layer_count

TINY = SiglipConfig(image_size=32, patch_size=4, width=32, num_layers=3, num_heads=2, mlp_ratio=2.0)


def _tower(cfg=TINY, seed=0, **kw):
    return SiglipVisionTower(cfg, rngs=nnx.Rngs(seed), **kw)


def _pixels(b=2, cfg=TINY, seed=0):
    return jax.random.normal(jax.random.key(seed), (b, cfg.image_size, cfg.image_size, 3))


_fwd = nnx.jit(lambda m, x: m(x))          # eager op-by-op dispatch is far slower on CPU
_pool = nnx.jit(lambda m, f: m.pool(f))


def _flat(module):
    # by the unrolled paths (blocks.i.*) whether the tower scans its layers or not
    return {k: np.asarray(v.get_value()) for k, v in flat_params(module).items()}


# ----------------------------------------------------------------------------- shapes and checks

def test_shapes_and_dtypes():
    t = _tower()
    out = _fwd(t, _pixels())
    assert out.shape == (2, TINY.num_patches, TINY.width) == (2, 64, 32)
    assert out.dtype == jnp.float32
    assert np.isfinite(np.asarray(out)).all()
    # final LayerNorm with unit scale / zero bias: every token is standardised
    np.testing.assert_allclose(np.asarray(out).mean(-1), 0, atol=1e-5)
    pooled = _pool(t, out)
    assert pooled.shape == (2, TINY.width) and pooled.dtype == jnp.float32

    tb = _tower(dtype=jnp.bfloat16)
    outb = _fwd(tb, _pixels())
    assert outb.dtype == jnp.bfloat16 and outb.shape == out.shape
    # bf16 compute must stay close to fp32 compute on the same weights
    nnx.update(tb, nnx.state(t, nnx.Param))
    err = np.abs(np.asarray(_fwd(tb, _pixels()).astype(jnp.float32)) - np.asarray(out)).max()
    assert err < 0.08, err


@pytest.mark.parametrize("select_layer,depth", [(-1, 3), (-2, 2), (-3, 1), (0, 3), (2, 2), (1, 1), (5, 3)])
def test_select_layer_depth(select_layer, depth):
    cfg = dataclasses.replace(TINY, select_layer=select_layer)
    assert cfg.depth == depth
    t = _tower(cfg)
    assert layer_count(t.blocks) == depth
    keys = torch_key_map(cfg)
    assert f"blocks.{depth - 1}.attn.qkv.weight" in keys
    assert f"blocks.{depth}.attn.qkv.weight" not in keys


def test_bad_inputs_raise():
    t = _tower()
    with pytest.raises(ValueError, match="32x32"):
        t(jnp.zeros((1, 16, 16, 3)))
    with pytest.raises(ValueError, match="32x32"):
        t(jnp.zeros((1, 32, 16, 3)))
    with pytest.raises(ValueError, match="3 channels"):
        t(jnp.zeros((1, 32, 32, 4)))
    with pytest.raises(ValueError, match="3 channels"):       # NCHW by mistake
        t(jnp.zeros((1, 3, 32, 32)))
    with pytest.raises(ValueError, match="rank 3"):
        t(jnp.zeros((32, 32, 3)))
    with pytest.raises(ValueError, match=r"\(B, 64, 32\)"):
        t.pool(jnp.zeros((1, 63, 32)))
    no_pool = _tower(dataclasses.replace(TINY, attn_pool=False))
    assert no_pool.attn_pool is None
    with pytest.raises(ValueError, match="attn_pool=False"):
        no_pool.pool(jnp.zeros((1, 64, 32)))
    with pytest.raises(ValueError, match="remat"):
        _tower(remat="everything")


def test_normalize():
    x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
    np.testing.assert_allclose(np.asarray(normalize(x, TINY)), np.asarray(x) * 2 - 1, atol=1e-6)
    cfg = dataclasses.replace(TINY, pixel_mean=(0.1, 0.2, 0.3), pixel_std=(0.5, 0.25, 2.0))
    want = (np.asarray(x) - np.array([0.1, 0.2, 0.3])) / np.array([0.5, 0.25, 2.0])
    np.testing.assert_allclose(np.asarray(normalize(x, cfg)), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="3 channels"):
        normalize(jnp.zeros((1, 3, 8, 8)), TINY)


def test_remat_same_output_and_grad():
    one = dataclasses.replace(TINY, select_layer=1)      # one block keeps the grad compile cheap
    t, tr = _tower(one), _tower(one, remat="block")
    x = _pixels()

    def both(a, b, x):                                   # one jit: a single compile for both
        loss = lambda m: jnp.sum(m(x) ** 2)              # noqa: E731
        return nnx.grad(loss)(a), nnx.grad(loss)(b), a(x), b(x)

    g, gr, y, yr = nnx.jit(both)(t, tr, x)
    np.testing.assert_allclose(np.asarray(yr), np.asarray(y), atol=1e-6)
    a, b = jax.tree.leaves(nnx.state(g)), jax.tree.leaves(nnx.state(gr))
    assert len(a) == len(b) == len(_flat(t))
    assert any(np.abs(np.asarray(u)).max() > 0 for u in a)
    for u, v in zip(a, b):
        np.testing.assert_allclose(np.asarray(v), np.asarray(u), atol=1e-5)


def test_full_size_param_count():
    """Counts from the official modules at SigLIP-L/16-384 (spec section 1)."""
    def count(module):
        return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(module, nnx.Param)))
    abstract = nnx.eval_shape(lambda: SiglipVisionTower(SiglipConfig(), rngs=nnx.Rngs(0)))
    assert layer_count(abstract.blocks) == 24
    assert count(abstract) == 316_283_904
    assert count(abstract) - count(abstract.attn_pool) == 303_688_704


# ----------------------------------------------------------------------------- key maps

@pytest.mark.parametrize("attn_pool", [True, False])
@pytest.mark.parametrize("select_layer", [-1, -2])
def test_key_map_covers_every_param_once(attn_pool, select_layer):
    cfg = dataclasses.replace(TINY, attn_pool=attn_pool, select_layer=select_layer)
    t = _tower(cfg)
    prefix = "vision_und_enc_model.vision_tower."
    km = torch_key_map(cfg, prefix)
    paths = [p for p, _ in km.values()]
    assert len(paths) == len(set(paths))
    assert set(paths) == set(_flat(t))
    assert all(k.startswith(prefix) for k in km)
    assert (f"{prefix}attn_pool.latent" in km) == attn_pool
    # export -> import into a differently seeded tower reproduces parameters and outputs exactly
    sd = export_state_dict(t, km)
    assert sd[f"{prefix}pos_embed"].shape == (1, 64, 32)
    assert sd[f"{prefix}patch_embed.proj.weight"].shape == (32, 3, 4, 4)
    assert sd[f"{prefix}blocks.0.attn.qkv.weight"].shape == (96, 32)
    t2 = _tower(cfg, seed=1)
    load_state_dict(t2, sd, km)
    flat2 = _flat(t2)
    for k, v in _flat(t).items():
        np.testing.assert_array_equal(flat2[k], v)


def test_hf_key_map_tiles_timm_tensors():
    cfg = TINY
    km = hf_siglip_key_map(cfg)
    timm_keys = set(torch_key_map(cfg))
    covered = {}
    for targets in km.values():
        for tk, t_rows, _ in targets:
            covered.setdefault(tk, []).append(t_rows)
    assert set(covered) == timm_keys
    d = cfg.width
    for tk, rows in covered.items():
        if rows == [None]:
            continue
        assert sorted(rows) == [(0, d), (d, 2 * d), (2 * d, 3 * d)], tk
    assert km["head.attention.in_proj_weight"] == (("attn_pool.q.weight", None, (0, d)),
                                                   ("attn_pool.kv.weight", None, (d, 3 * d)))
    assert all(k.startswith("vision_model.") for k in hf_siglip_key_map(cfg, "vision_model."))


# ----------------------------------------------------------------------------- parity: transformers

def _hf_model(cfg, layers=None, seed=0):
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("transformers")
    hcfg = tf.SiglipVisionConfig(
        hidden_size=cfg.width, intermediate_size=cfg.mlp_dim, num_hidden_layers=layers or cfg.num_layers,
        num_attention_heads=cfg.num_heads, image_size=cfg.image_size, patch_size=cfg.patch_size,
        num_channels=3, layer_norm_eps=cfg.layer_norm_eps,
        hidden_act="gelu",            # exact erf GELU, as timm's nn.GELU in the official tower
        vision_use_head=cfg.attn_pool, attn_implementation="eager")
    torch.manual_seed(seed)
    model = tf.SiglipVisionModel(hcfg).eval()
    with torch.no_grad():                   # perturb every tensor (norm scales/biases included)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _hf_run(model, pixels_nhwc, **kw):
    import torch
    x = torch.from_numpy(np.asarray(pixels_nhwc).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        return model(pixel_values=x, **kw)


def test_parity_with_transformers_siglip():
    model = _hf_model(TINY)
    t = _tower(seed=3)
    load_hf_siglip(t, model.state_dict())
    x = _pixels(seed=5)
    ref = _hf_run(model, x)
    ours = _fwd(t, x)
    err = np.abs(np.asarray(ours) - ref.last_hidden_state.numpy()).max()
    assert err < 1e-4, err
    perr = np.abs(np.asarray(_pool(t, ours)) - ref.pooler_output.numpy()).max()
    assert perr < 1e-4, perr
    # the comparison is sensitive: a different input gives different features
    assert np.abs(np.asarray(_fwd(t, _pixels(seed=6))) - ref.last_hidden_state.numpy()).max() > 1e-2


@pytest.mark.parametrize("select_layer", [-2, 1])
def test_select_layer_parity_with_transformers(select_layer):
    """A shallower tower = the official final norm applied after block ``depth``."""
    import torch
    cfg = dataclasses.replace(TINY, select_layer=select_layer)
    model = _hf_model(TINY)                 # full 3-layer HF model; extra layers are dropped
    t = _tower(cfg)
    load_hf_siglip(t, model.state_dict())
    x = _pixels(seed=2)
    ref = _hf_run(model, x, output_hidden_states=True)
    with torch.no_grad():
        want = model.post_layernorm(ref.hidden_states[cfg.depth]).numpy()
    err = np.abs(np.asarray(_fwd(t, x)) - want).max()
    assert err < 1e-4, err


def test_hf_conversion_roundtrip_and_strictness():
    import torch
    model = _hf_model(TINY)
    sd = {k: v for k, v in model.state_dict().items()}
    timm_sd = hf_siglip_to_timm_state_dict(sd, TINY, timm_prefix="vt.")
    assert set(timm_sd) == {"vt." + k for k in torch_key_map(TINY)}
    assert timm_sd["vt.pos_embed"].shape == (1, 64, 32)
    np.testing.assert_array_equal(timm_sd["vt.blocks.1.attn.qkv.weight"][32:64],
                                  sd["encoder.layers.1.self_attn.k_proj.weight"].numpy())
    back = timm_to_hf_siglip_state_dict(timm_sd, TINY, timm_prefix="vt.", hf_prefix="vision_model.")
    assert set(back) == {"vision_model." + k for k in sd}
    for k, v in sd.items():
        np.testing.assert_array_equal(back["vision_model." + k], v.numpy())

    # export from our tower loads strictly into a fresh HF model and reproduces its outputs
    t = _tower(seed=4)
    exported = export_hf_siglip(t)
    fresh = _hf_model(TINY, seed=9)
    res = fresh.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in exported.items()}, strict=True)
    assert not res.missing_keys and not res.unexpected_keys
    x = _pixels(seed=7)
    assert np.abs(_hf_run(fresh, x).last_hidden_state.numpy() - np.asarray(_fwd(t, x))).max() < 1e-4

    # bf16 torch tensors convert bit-exactly
    bf = {k: v.to(torch.bfloat16) for k, v in sd.items()}
    conv = hf_siglip_to_timm_state_dict(bf, TINY)
    np.testing.assert_array_equal(conv["norm.weight"].astype(np.float32),
                                  sd["post_layernorm.weight"].to(torch.bfloat16).float().numpy())

    bad = dict(sd, **{"encoder.layers.0.self_attn.extra": sd["post_layernorm.weight"]})
    with pytest.raises(CheckpointMismatch, match="unexpected keys: encoder.layers.0.self_attn.extra"):
        hf_siglip_to_timm_state_dict(bad, TINY)
    short = {k: v for k, v in sd.items() if k != "head.probe"}
    with pytest.raises(CheckpointMismatch, match="missing keys: head.probe"):
        hf_siglip_to_timm_state_dict(short, TINY)
    with pytest.raises(CheckpointMismatch, match="missing keys"):
        timm_to_hf_siglip_state_dict({k: v for k, v in timm_sd.items() if "norm2" not in k}, TINY,
                                     timm_prefix="vt.")
    # without a pool head the HF head is dropped rather than loaded anywhere
    no_pool = dataclasses.replace(TINY, attn_pool=False)
    assert not any(k.startswith("attn_pool") for k in hf_siglip_to_timm_state_dict(sd, no_pool))
