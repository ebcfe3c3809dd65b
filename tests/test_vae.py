"""SDXL-VAE (diffusers AutoencoderKL layout): shapes, input checks, key maps, parity with
diffusers in fp32, legacy attention key names, and the SDXL-VAE parameter count.

Modules are built with ``nnx.eval_shape`` and then filled from a state dict: eager random
init compiles one threefry program per parameter shape, which costs tens of seconds on CPU,
and every test here overwrites the weights anyway.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from janusflow.checkpoint.torch_layout import (CheckpointMismatch, export_state_dict,
                                               load_state_dict)
from janusflow.configs.schema import VAEConfig
from janusflow.models.layers import count_params
from janusflow.checkpoint.key_maps import normalize_vae_keys
from janusflow.checkpoint.key_maps import vae_key_map as torch_key_map
from janusflow.models.vae import AutoencoderKL, PixelVAE, decode_latents, encode_latents, make_vae

TINY = VAEConfig(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                 latent_channels=4, scaling_factor=0.5, shift_factor=0.1)
VARIANTS = [
    TINY,
    VAEConfig(block_out_channels=(8, 16, 16), layers_per_block=2, norm_num_groups=4,
              latent_channels=3, mid_block_add_attention=False, use_quant_conv=False,
              use_post_quant_conv=False),
    VAEConfig(block_out_channels=(8,), layers_per_block=1, norm_num_groups=4, in_channels=1,
              latent_channels=2),
]


def abstract(cfg, **kw):
    return nnx.eval_shape(lambda: AutoencoderKL(cfg, rngs=nnx.Rngs(0), **kw))


def zeros_like_module(module):
    """A concrete copy of an abstract module, every array zero, ready for load_state_dict."""
    graphdef, state = nnx.split(module)
    return nnx.merge(graphdef, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), state))


def params(module):
    return {tuple(k): v for k, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}


def diffusers_vae(cfg, meta=False):
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    n = len(cfg.block_out_channels)
    kw = dict(in_channels=cfg.in_channels, out_channels=cfg.in_channels,
              down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
              block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
              latent_channels=cfg.latent_channels, norm_num_groups=cfg.norm_num_groups,
              use_quant_conv=cfg.use_quant_conv, use_post_quant_conv=cfg.use_post_quant_conv,
              mid_block_add_attention=cfg.mid_block_add_attention)
    if meta:
        with torch.device("meta"):
            return diffusers.AutoencoderKL(**kw)
    return diffusers.AutoencoderKL(**kw).eval()


def randomize_(model, seed=0):
    """Every parameter random, norms included, at scales that keep activations O(1)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if p.ndim > 1:
                p.copy_(r / math.sqrt(p[0].numel()))
            elif name.endswith("weight"):             # GroupNorm scales
                p.copy_(1.0 + 0.3 * r)
            else:
                p.copy_(0.3 * r)


def numpy_sd(model):
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


@nnx.jit
def run_all(vae, x):
    mean, logvar = vae.encode(x)
    return mean, logvar, vae.decode(mean)


@pytest.fixture(scope="module")
def tiny_pair():
    torch = pytest.importorskip("torch")
    ref = diffusers_vae(TINY)
    randomize_(ref)
    sd = numpy_sd(ref)
    ours = zeros_like_module(abstract(TINY))
    load_state_dict(ours, sd, torch_key_map(TINY))
    x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        post = ref.encode(torch.from_numpy(x).permute(0, 3, 1, 2)).latent_dist
        dec = ref.decode(post.mean).sample
    nhwc = lambda t: t.permute(0, 2, 3, 1).numpy()
    return ref, sd, ours, x, dict(mean=nhwc(post.mean), logvar=nhwc(post.logvar), dec=nhwc(dec))


# ------------------------------------------------------------------------------- shapes & checks
def test_shapes_and_dtype_tiny():
    vae = abstract(TINY)
    mean, logvar = nnx.eval_shape(lambda v, x: v.encode(x), vae, jnp.zeros((2, 32, 32, 3)))
    assert mean.shape == logvar.shape == (2, 16, 16, 4)
    out = nnx.eval_shape(lambda v, z: v.decode(z), vae, jnp.zeros((2, 16, 16, 4)))
    assert out.shape == (2, 32, 32, 3) and out.dtype == jnp.float32
    vae16 = abstract(TINY, dtype=jnp.bfloat16)
    mean, _ = nnx.eval_shape(lambda v, x: v.encode(x), vae16, jnp.zeros((1, 64, 32, 3)))
    assert mean.shape == (1, 32, 16, 4) and mean.dtype == jnp.bfloat16


def test_bad_inputs_raise():
    vae = abstract(TINY)
    with pytest.raises(ValueError, match=r"expected 3 channels.*got 4 channels"):
        vae.encode(jnp.zeros((1, 32, 32, 4)))
    with pytest.raises(ValueError, match=r"expected 4 channels.*got 3 channels"):
        vae.decode(jnp.zeros((1, 16, 16, 3)))
    with pytest.raises(ValueError, match="rank 4"):
        vae.encode(jnp.zeros((32, 32, 3)))
    with pytest.raises(ValueError, match="multiples of 2"):
        vae.encode(jnp.zeros((1, 31, 32, 3)))
    with pytest.raises(ValueError, match="kind"):
        AutoencoderKL(VAEConfig(kind="pixel"), rngs=nnx.Rngs(0))


def test_pixel_vae_identity():
    cfg = VAEConfig(kind="pixel", in_channels=3, scaling_factor=1.0)
    vae = make_vae(cfg, rngs=nnx.Rngs(0))
    assert isinstance(vae, PixelVAE) and params(vae) == {} and torch_key_map(cfg) == {}
    x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
    mean, logvar = vae.encode(x)
    assert (mean == x).all() and logvar.shape == x.shape
    # a pixel "posterior" is a point: sampling must not add noise
    assert (encode_latents(vae, cfg, x, jax.random.key(0)) == x).all()
    assert (decode_latents(vae, cfg, encode_latents(vae, cfg, x)) == x).all()
    with pytest.raises(ValueError, match="channels"):
        vae.decode(jnp.zeros((1, 8, 8, 4)))
    assert isinstance(nnx.eval_shape(lambda: make_vae(TINY, rngs=nnx.Rngs(0))), AutoencoderKL)


class StubVAE:
    """Fixed posterior, decode = x2, so the latent scaling is checked on its own."""

    def __init__(self, mean, logvar):
        self.mean, self.logvar, self.seen = mean, logvar, None

    def encode(self, x):
        return self.mean, self.logvar

    def decode(self, z):
        self.seen = z
        return 2 * z


def test_latent_scaling_and_sampling():
    r = np.random.default_rng(2)
    mean = jnp.asarray(r.standard_normal((2, 4, 4, 4)), jnp.float32)
    logvar = jnp.asarray(r.uniform(-3, 1, (2, 4, 4, 4)), jnp.float32)
    vae, x = StubVAE(mean, logvar), jnp.zeros((2, 8, 8, 3))
    np.testing.assert_allclose(encode_latents(vae, TINY, x), (mean - 0.1) * 0.5, atol=1e-7)
    key = jax.random.key(3, impl="rbg")          # rbg: threefry takes seconds to compile on CPU
    eps = jax.random.normal(key, mean.shape, jnp.float32)
    want = (mean + jnp.exp(0.5 * logvar) * eps - 0.1) * 0.5
    np.testing.assert_allclose(encode_latents(vae, TINY, x, key), want, atol=1e-6)
    lat = jnp.asarray(r.standard_normal((2, 4, 4, 4)), jnp.float32)
    np.testing.assert_allclose(decode_latents(vae, TINY, lat), 2 * (lat / 0.5 + 0.1), atol=1e-6)
    np.testing.assert_allclose(vae.seen, lat / 0.5 + 0.1, atol=1e-6)


# ------------------------------------------------------------------------------------- key map
@pytest.mark.parametrize("cfg", VARIANTS, ids=["tiny", "noattn_noquant", "single_block"])
def test_key_map_covers_every_param_once(cfg):
    km = torch_key_map(cfg, prefix="vae.")
    assert all(k.startswith("vae.") for k in km)
    targets = [p for p, _ in km.values()]
    assert len(targets) == len(set(targets))
    ps = params(abstract(cfg))
    assert set(targets) == set(ps)
    # against the real diffusers module: same key set, shapes agree after the transform
    ref = diffusers_vae(cfg, meta=True)
    ref_shapes = {"vae." + k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert set(ref_shapes) == set(km)
    for k, (path, tr) in km.items():
        ours = tuple(ps[path].shape)
        if tr in ("conv",):
            ours = (ours[3], ours[2], ours[0], ours[1])
        elif tr == "linear":
            ours = ours[::-1]
        assert ours == ref_shapes[k], k


# -------------------------------------------------------------------------------------- parity
def test_parity_with_diffusers(tiny_pair):
    ref, sd, ours, x, want = tiny_pair
    mean, logvar, dec = map(np.asarray, run_all(ours, jnp.asarray(x)))
    for name, got in (("mean", mean), ("logvar", logvar), ("dec", dec)):
        err = np.abs(got - want[name]).max()
        assert err < 1e-4, f"{name}: max abs err {err}"
    assert np.abs(want["dec"]).max() > 0.1 and np.abs(want["logvar"]).std() > 0.05  # not trivial
    # export is the exact inverse of import
    exported = export_state_dict(ours, torch_key_map(TINY))
    assert set(exported) == set(sd) and all((exported[k] == sd[k]).all() for k in sd)


def test_logvar_clamped_like_diffusers(tiny_pair):
    import torch
    ref, sd, _, x, _ = tiny_pair
    sd = dict(sd)
    b = sd["quant_conv.bias"].copy()
    b[TINY.latent_channels:] += 100.0                 # push logvar far above the clamp
    sd["quant_conv.bias"] = b
    ours = zeros_like_module(abstract(TINY))
    load_state_dict(ours, sd, torch_key_map(TINY))
    _, logvar, *_ = run_all(ours, jnp.asarray(x))
    ref.quant_conv.bias.data = torch.from_numpy(b)
    with torch.no_grad():
        ref_lv = ref.encode(torch.from_numpy(x).permute(0, 3, 1, 2)).latent_dist.logvar
    ref.quant_conv.bias.data = torch.from_numpy(tiny_pair[1]["quant_conv.bias"])
    assert (np.asarray(logvar) == 20.0).all() and (ref_lv == 20.0).all()


# ------------------------------------------------------------------------- legacy key names
def test_old_attention_key_names_load_identically(tiny_pair):
    _, sd, ours, _, _ = tiny_pair
    rename = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    old = {}
    for k, v in sd.items():
        for new, legacy in rename.items():
            if f".attentions.0.{new}." in k:
                k = k.replace(f".attentions.0.{new}.", f".attentions.0.{legacy}.")
                # the encoder gets the 1x1-conv form, the decoder the Linear form
                if k.startswith("encoder") and k.endswith("weight"):
                    v = v[:, :, None, None]
        old[k] = v
    assert "encoder.mid_block.attentions.0.query.weight" in old
    assert old["encoder.mid_block.attentions.0.proj_attn.weight"].ndim == 4
    km = torch_key_map(TINY)
    with pytest.raises(CheckpointMismatch, match="query"):
        load_state_dict(abstract(TINY), old, km)
    fresh = zeros_like_module(abstract(TINY))
    load_state_dict(fresh, normalize_vae_keys(old), km)
    a, b = params(ours), params(fresh)
    assert all(np.array_equal(np.asarray(a[p][...]), np.asarray(b[p][...])) for p in a)
    # prefixes survive, and a file carrying both spellings is refused
    pre = normalize_vae_keys({"vae." + k: v for k, v in old.items()})
    assert set(pre) == {"vae." + k for k in sd}
    both = dict(old, **{"encoder.mid_block.attentions.0.to_q.weight": sd["encoder.mid_block.attentions.0.to_q.weight"]})
    with pytest.raises(ValueError, match="old and the new"):
        normalize_vae_keys(both)


# ---------------------------------------------------------------------------- SDXL-VAE size
def test_sdxl_vae_default_builds_abstractly_with_diffusers_param_count():
    cfg = VAEConfig()
    vae = abstract(cfg)
    n_ours = count_params(nnx.state(vae, nnx.Param))
    ref = diffusers_vae(cfg, meta=True)
    n_ref = sum(p.numel() for p in ref.parameters())
    assert n_ours == n_ref
    assert abs(n_ours - 83.65e6) < 0.01e6, n_ours
    assert len(torch_key_map(cfg)) == len(ref.state_dict())
    mean, _ = nnx.eval_shape(lambda v, x: v.encode(x), vae, jnp.zeros((1, 384, 384, 3)))
    assert mean.shape == (1, 48, 48, 4)
