"""g_enc / g_dec: shapes, official parameter counts, key maps, and numerics against an
independent NumPy re-implementation (NCHW, torch layout) of the official equations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from janusflow.checkpoint.torch_layout import export_state_dict, load_state_dict
from janusflow.configs.schema import GenCodecConfig
from janusflow.checkpoint.key_maps import gen_decoder_key_map as torch_key_map_decoder
from janusflow.checkpoint.key_maps import gen_encoder_key_map as torch_key_map_encoder
from janusflow.models.gen_codec import GenDecoder, GenEncoder, timestep_embedding
from janusflow.models.layers import count_params, pixel_shuffle

LATENT, HIDDEN = 4, 64
CFG_K2 = GenCodecConfig(channels=32, kernel_size=2, stride=2, num_blocks=2)
CFG_K4 = GenCodecConfig(channels=32, kernel_size=4, stride=4, num_blocks=2, decoder_patch=2,
                        decoder_upsamples=2)
CFG_K7 = GenCodecConfig(channels=16, kernel_size=7, stride=4, num_blocks=1, decoder_patch=4,
                        decoder_upsamples=1, res_ffn_factor=2)


def build(cfg, latent=LATENT, hidden=HIDDEN, seed=0, **kw):
    """Modules filled with random weights in the official layout. Built abstractly and then
    loaded, because eager random init compiles one XLA program per parameter shape (seconds
    on a busy CPU); the real initialiser is covered by ``test_init``."""
    rng = np.random.default_rng(seed)
    out = []
    for cls, shapes, km in ((GenEncoder, official_encoder_shapes, torch_key_map_encoder),
                            (GenDecoder, official_decoder_shapes, torch_key_map_decoder)):
        graph, state = nnx.split(nnx.eval_shape(lambda: cls(
            cfg, latent_channels=latent, hidden_size=hidden, rngs=nnx.Rngs(0), **kw)))
        m = nnx.merge(graph, jax.tree.map(lambda a: jnp.asarray(np.zeros(a.shape, a.dtype)), state))
        sd = random_state_dict(shapes(cfg, latent, hidden), rng)
        if not cfg.use_bias:
            sd = {k: v for k, v in sd.items() if k in km(cfg)}
        load_state_dict(m, sd, km(cfg))
        out += [m, sd]
    return out      # enc, enc_sd, dec, dec_sd


@nnx.jit
def run(enc, dec, z, t, y=None):
    """g_enc then g_dec (on ``y`` if given, else on x_emb itself), jitted: one compile per
    config instead of one per eager op."""
    x_emb, t_emb = enc(z, t)
    return x_emb, t_emb, dec(x_emb if y is None else y, x_emb, t_emb)


def params(module):
    return {tuple(k): v for k, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}


# --------------------------------------------------------------------------- official layout
def block_shapes(p, c, hidden, ffn):
    return {p + "depthwise.weight": (c, 1, 7, 7), p + "depthwise.bias": (c,),
            p + "norm.weight": (c,),
            p + "channelwise_linear_1.weight": (ffn * c, c), p + "channelwise_linear_1.bias": (ffn * c,),
            p + "channelwise_norm.weight": (1, 1, 1, ffn * c), p + "channelwise_norm.bias": (1, 1, 1, ffn * c),
            p + "channelwise_linear_2.weight": (c, ffn * c), p + "channelwise_linear_2.bias": (c,),
            p + "cond_embeds_mapper.weight": (2 * c, hidden), p + "cond_embeds_mapper.bias": (2 * c,)}


def official_encoder_shapes(cfg, latent, hidden):
    c, k = cfg.channels, cfg.kernel_size
    s = {"time_embed.linear_1.weight": (hidden, c), "time_embed.linear_1.bias": (hidden,),
         "time_embed.linear_2.weight": (hidden, hidden), "time_embed.linear_2.bias": (hidden,),
         "in_conv.weight": (c, latent, k, k), "in_conv.bias": (c,)}
    for i in range(cfg.num_blocks):
        s.update(block_shapes(f"mid_block.res_blocks.{i}.", c, hidden, cfg.res_ffn_factor))
    return s


def official_decoder_shapes(cfg, latent, hidden):
    c, p, n = cfg.channels, cfg.decoder_patch, cfg.decoder_upsamples
    s = {"input_norm.weight": (c,)}
    for i in range(cfg.num_blocks):
        s.update(block_shapes(f"mid_block.res_blocks.{i}.", 2 * c, hidden, cfg.res_ffn_factor))
    for i in range(n):
        cin, cout = (2 * c if i == 0 else c), (latent if i == n - 1 else c)
        s[f"out_convs.{i}.norm.weight"] = (cin,)
        s[f"out_convs.{i}.unpatch_conv.weight"] = (cout * p * p, cin, 1, 1)
        s[f"out_convs.{i}.unpatch_conv.bias"] = (cout * p * p,)
    return s


def random_state_dict(shapes, rng):
    sd = {}
    for k, shape in shapes.items():
        if k.endswith("norm.weight") and "channelwise" not in k:     # RMSNorm scales around 1
            a = 1.0 + 0.2 * rng.standard_normal(shape)
        elif "channelwise_norm" in k:                                # GRN: nonzero so it matters
            a = 0.5 * rng.standard_normal(shape)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 4
            a = rng.standard_normal(shape) / math.sqrt(fan_in) * (1.0 if len(shape) > 1 else 0.3)
        sd[k] = a.astype(np.float32)
    return sd


# --------------------------------------------------------------------------- NumPy reference
def np_conv(x, w, b, stride=1, pad=0, groups=1):
    """torch Conv2d on NCHW with OIHW weights."""
    bsz, cin, h, wd = x.shape
    o, _, kh, kw = w.shape
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    xg = x.reshape(bsz, groups, cin // groups, *x.shape[2:])
    wg = w.reshape(groups, o // groups, cin // groups, kh, kw)
    out = np.zeros((bsz, groups, o // groups, ho, wo))
    for i in range(kh):
        for j in range(kw):
            patch = xg[:, :, :, i:i + stride * ho:stride, j:j + stride * wo:stride]
            out += np.einsum("bgchw,goc->bgohw", patch, wg[:, :, :, i, j])
    out = out.reshape(bsz, o, ho, wo)
    return out + b[None, :, None, None]


def np_lin(x, w, b):          # channelwise Linear on NCHW
    return np.einsum("bchw,oc->bohw", x, w) + b[None, :, None, None]


def np_rms(x, w, eps):        # over channels (axis 1)
    return x / np.sqrt(np.mean(x * x, axis=1, keepdims=True) + eps) * w[None, :, None, None]


def np_gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def np_silu(x):
    return x / (1.0 + np.exp(-x))


def np_grn(x, gamma, beta):
    gx = np.sqrt(np.sum(x * x, axis=(2, 3), keepdims=True))
    nx = gx / (np.mean(gx, axis=1, keepdims=True) + 1e-6)
    g, bt = gamma.reshape(1, -1, 1, 1), beta.reshape(1, -1, 1, 1)
    return g * (x * nx) + bt + x


def np_pixel_shuffle(x, r):
    b, c, h, w = x.shape
    x = x.reshape(b, c // (r * r), r, r, h, w).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c // (r * r), h * r, w * r)


def np_sinusoid(t, dim):
    half = dim // 2
    freqs = np.exp(-math.log(10000.0) * np.arange(half) / half)
    ph = t[:, None] * freqs[None]
    return np.concatenate([np.cos(ph), np.sin(ph)], axis=1)


def np_block(sd, p, x, temb, eps):
    c = x.shape[1]
    h = np_conv(x, sd[p + "depthwise.weight"], sd[p + "depthwise.bias"], pad=3, groups=c)
    h = np_rms(h, sd[p + "norm.weight"], eps)
    h = np_gelu(np_lin(h, sd[p + "channelwise_linear_1.weight"], sd[p + "channelwise_linear_1.bias"]))
    h = np_grn(h, sd[p + "channelwise_norm.weight"], sd[p + "channelwise_norm.bias"])
    h = np_lin(h, sd[p + "channelwise_linear_2.weight"], sd[p + "channelwise_linear_2.bias"])
    y = x + h
    m = np_silu(temb) @ sd[p + "cond_embeds_mapper.weight"].T + sd[p + "cond_embeds_mapper.bias"]
    scale, shift = m[:, :c], m[:, c:]
    return y * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


def np_encoder(sd, cfg, z, t):
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    e = np_sinusoid(t, cfg.channels)
    e = np_silu(e @ sd["time_embed.linear_1.weight"].T + sd["time_embed.linear_1.bias"])
    temb = e @ sd["time_embed.linear_2.weight"].T + sd["time_embed.linear_2.bias"]
    x = np_conv(z, sd["in_conv.weight"], sd["in_conv.bias"], stride=cfg.stride,
                pad=int(math.ceil(cfg.kernel_size - cfg.stride)))
    for i in range(cfg.num_blocks):
        x = np_block(sd, f"mid_block.res_blocks.{i}.", x, temb, cfg.norm_eps)
    return x, temb


def np_decoder(sd, cfg, x, skip, temb):
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    h = np.concatenate([np_rms(x, sd["input_norm.weight"], cfg.norm_eps), skip], axis=1)
    for i in range(cfg.num_blocks):
        h = np_block(sd, f"mid_block.res_blocks.{i}.", h, temb, cfg.norm_eps)
    for i in range(cfg.decoder_upsamples):
        p = f"out_convs.{i}."
        h = np_rms(h, sd[p + "norm.weight"], cfg.norm_eps)
        h = np_conv(h, sd[p + "unpatch_conv.weight"], sd[p + "unpatch_conv.bias"])
        h = np_pixel_shuffle(h, cfg.decoder_patch)
    return h


# --------------------------------------------------------------------------- tests
def test_timestep_embedding_formula():
    t = np.array([0.0, 1.0, 37.5, 999.0])
    np.testing.assert_allclose(np.asarray(timestep_embedding(t, 10)), np_sinusoid(t, 10),
                               atol=2e-5)
    odd = np.asarray(timestep_embedding(t, 7))
    assert odd.shape == (4, 7) and np.all(odd[:, -1] == 0)
    np.testing.assert_allclose(odd[:, :6], np_sinusoid(t, 6), atol=2e-5)
    assert np.allclose(odd[0, :3], 1.0)      # cos first: at t=0 the first half is 1


def test_timestep_embedding_matches_diffusers():
    torch = pytest.importorskip("torch")
    emb_mod = pytest.importorskip("diffusers.models.embeddings")
    t = np.array([0.0, 3.0, 250.0, 733.3, 1000.0], np.float32)
    for dim in (32, 768, 9):
        ref = emb_mod.get_timestep_embedding(torch.from_numpy(t), dim, flip_sin_to_cos=True,
                                             downscale_freq_shift=0).numpy()
        np.testing.assert_allclose(np.asarray(timestep_embedding(t, dim)), ref, atol=1e-4)


def test_pixel_shuffle_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 2 * 3 * 3)).astype(np.float32)
    ref = torch.nn.PixelShuffle(3)(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_array_equal(np.asarray(pixel_shuffle(jnp.asarray(x), 3)),
                                  ref.transpose(0, 2, 3, 1))


@pytest.mark.parametrize("cfg,grid", [(CFG_K2, 8), (CFG_K4, 4), (CFG_K7, 4)])
def test_shapes(cfg, grid):
    enc, _, dec, _ = build(cfg)
    z = jnp.ones((2, 16, 16, LATENT))
    y = jnp.ones((2, grid, grid, cfg.channels))       # same shapes as the numeric test: one compile
    x_emb, t_emb, v = run(enc, dec, z, jnp.array([0.0, 500.0]), y)
    assert x_emb.shape == (2, grid, grid, cfg.channels) and t_emb.shape == (2, HIDDEN)
    assert v.shape == z.shape


def test_init():
    """Real initialisation: fp32 params with logical axes, GRN zero (identity), norms one.
    Built under jit with the rbg PRNG: eager threefry init compiles one program per shape."""
    cfg = GenCodecConfig(channels=8, num_blocks=1)
    enc = nnx.jit(lambda: GenEncoder(cfg, latent_channels=LATENT, hidden_size=16,
                                     rngs=nnx.Rngs(jax.random.key(0, impl="rbg"))))()
    p = params(enc)
    assert all(v[...].dtype == jnp.float32 for v in p.values())
    assert all(len(v.get_metadata()["axes"]) == v[...].ndim for v in p.values())
    assert np.all(np.asarray(p[("blocks", 0, "grn_gamma")][...]) == 0)
    assert np.all(np.asarray(p[("blocks", 0, "grn_beta")][...]) == 0)
    assert np.all(np.asarray(p[("blocks", 0, "norm", "scale")][...]) == 1)
    assert np.all(np.asarray(p[("time_linear_1", "bias")][...]) == 0)
    k = np.asarray(p[("time_linear_2", "kernel")][...])   # torch default: U(+-1/sqrt(fan_in))
    assert 0.5 / 4 < np.abs(k).max() <= 1 / 4 and np.std(k) > 0.1


def test_bf16_compute_dtype():
    enc, _, dec, _ = build(CFG_K2, dtype=jnp.bfloat16)
    z, t = jnp.ones((2, 16, 16, LATENT)), jnp.array([0.0, 500.0])
    y = jnp.ones((2, 8, 8, CFG_K2.channels))
    x_emb, t_emb, v = run(enc, dec, z, t, y)
    assert x_emb.dtype == t_emb.dtype == v.dtype == jnp.bfloat16
    assert params(enc)[("in_conv", "kernel")][...].dtype == jnp.float32
    ref = run(*build(CFG_K2)[::2], z, t, y)[2]              # same weights in fp32
    err = np.abs(np.asarray(v, np.float32) - np.asarray(ref)).max()
    assert err < 0.1 * np.abs(np.asarray(ref)).max()


def test_official_param_counts():
    cfg = GenCodecConfig()
    enc = nnx.eval_shape(lambda: GenEncoder(cfg, latent_channels=4, hidden_size=2048, rngs=nnx.Rngs(0)))
    dec = nnx.eval_shape(lambda: GenDecoder(cfg, latent_channels=4, hidden_size=2048, rngs=nnx.Rngs(0)))
    assert count_params(nnx.state(enc, nnx.Param)) == 21_614_336
    assert count_params(nnx.state(dec, nnx.Param)) == 50_561_296
    # the official key layout at 1.3B has exactly these sizes too
    assert sum(math.prod(s) for s in official_encoder_shapes(cfg, 4, 2048).values()) == 21_614_336
    assert sum(math.prod(s) for s in official_decoder_shapes(cfg, 4, 2048).values()) == 50_561_296


@pytest.mark.parametrize("cfg", [CFG_K2, CFG_K4, GenCodecConfig(channels=8, num_blocks=1, use_bias=False)])
def test_key_maps_cover_every_param_once(cfg):
    enc, enc_sd, dec, dec_sd = build(cfg)
    pre = ("vision_gen_enc_model.", "vision_gen_dec_model.")
    for module, km_fn, sd, pre in ((enc, torch_key_map_encoder, enc_sd, pre[0]),
                                   (dec, torch_key_map_decoder, dec_sd, pre[1])):
        km = km_fn(cfg, pre)
        paths = [p for p, _ in km.values()]
        assert len(paths) == len(set(paths))
        assert set(paths) == set(params(module))
        assert all(k.startswith(pre) for k in km)
        assert not any("time_proj" in k for k in km)       # Timesteps has no parameters
        # export gives back exactly the official keys, shapes and values that were loaded
        out = export_state_dict(module, km_fn(cfg))
        assert sorted(out) == sorted(sd)
        for k, a in out.items():
            np.testing.assert_array_equal(a, sd[k])
    if not cfg.use_bias:
        assert not any(k.endswith(".bias") and "in_conv" not in k and "channelwise_norm" not in k
                       for k in list(torch_key_map_encoder(cfg)) + list(torch_key_map_decoder(cfg)))


@pytest.mark.parametrize("cfg", [CFG_K2, CFG_K4, CFG_K7])
def test_matches_numpy_reference(cfg):
    enc, enc_sd, dec, dec_sd = build(cfg)
    rng = np.random.default_rng(1)
    z = rng.standard_normal((2, LATENT, 16, 16)).astype(np.float32)          # NCHW
    t = np.array([37.0, 812.5], np.float32)
    g = 16 // cfg.stride
    y = rng.standard_normal((2, cfg.channels, g, g)).astype(np.float32)      # LLM side, NCHW

    ref_x, ref_t = np_encoder(enc_sd, cfg, z.astype(np.float64), t.astype(np.float64))
    ref_v = np_decoder(dec_sd, cfg, y.astype(np.float64), ref_x, ref_t)
    x_emb, t_emb, v = run(enc, dec, jnp.asarray(z.transpose(0, 2, 3, 1)), jnp.asarray(t),
                          jnp.asarray(y.transpose(0, 2, 3, 1)))
    assert ref_x.shape == (2, cfg.channels, g, g) and ref_v.shape == (2, LATENT, 16, 16)
    assert np.abs(np.asarray(t_emb) - ref_t).max() < 1e-4
    assert np.abs(np.asarray(x_emb).transpose(0, 3, 1, 2) - ref_x).max() < 1e-4
    assert np.abs(np.asarray(v).transpose(0, 3, 1, 2) - ref_v).max() < 1e-4
    assert np.abs(ref_v).max() > 0.1            # the comparison is not between near-zeros


def test_grn_matters_in_reference_weights():
    """Guard on the numeric test: with the random GRN gamma/beta zeroed the outputs move, so
    a model that ignored GRN could not pass it."""
    enc, enc_sd, dec, dec_sd = build(CFG_K2)
    z = np.random.default_rng(2).standard_normal((1, LATENT, 16, 16))
    t = np.array([100.0])
    x0, _ = np_encoder(enc_sd, CFG_K2, z, t)
    no_grn = {k: (np.zeros_like(v) if "channelwise_norm" in k else v) for k, v in enc_sd.items()}
    x1, _ = np_encoder(no_grn, CFG_K2, z, t)
    assert np.abs(x0 - x1).max() > 1e-2


def test_bad_inputs():
    enc, _, dec, _ = build(CFG_K2)
    t2 = jnp.zeros((2,))
    with pytest.raises(ValueError, match="latent channels"):
        enc(jnp.zeros((2, 16, 16, 3)), t2)
    with pytest.raises(ValueError, match="NHWC"):
        enc(jnp.zeros((2, 16, 16)), t2)
    with pytest.raises(ValueError, match=r"t must have shape"):
        enc(jnp.zeros((2, 16, 16, LATENT)), jnp.zeros((3,)))
    with pytest.raises(ValueError, match=r"t must have shape"):
        enc(jnp.zeros((2, 16, 16, LATENT)), jnp.zeros((2, 1)))
    with pytest.raises(ValueError, match="multiple of the stride"):
        enc(jnp.zeros((2, 15, 16, LATENT)), t2)
    x = jnp.zeros((2, 8, 8, CFG_K2.channels))
    temb = jnp.zeros((2, HIDDEN))
    with pytest.raises(ValueError, match="NHWC"):
        dec(jnp.zeros((2, 8, 8, 5)), x, temb)
    with pytest.raises(ValueError, match="NHWC"):
        dec(jnp.zeros((2, 64, CFG_K2.channels)), x, temb)
    with pytest.raises(ValueError, match="skip"):
        dec(x, jnp.zeros((2, 4, 4, CFG_K2.channels)), temb)
    with pytest.raises(ValueError, match="t_emb"):
        dec(x, x, jnp.zeros((1, HIDDEN)))


@pytest.mark.parametrize("hw", [(8, 8), (5, 7)])
def test_cpu_depthwise_paths_equal_the_native_convolution(hw, monkeypatch):
    """Both CPU implementations of the 7x7 depthwise conv (dense per-channel matrix on small
    grids, shifted sum otherwise) give the native grouped convolution's values and gradients."""
    from janusflow.models import gen_codec
    from janusflow.models.layers import Conv2d
    c = 6
    conv = Conv2d(c, c, 7, padding=3, groups=c, rngs=nnx.Rngs(0))
    conv.bias.set_value(jax.random.normal(jax.random.key(2), (c,)))
    x = jax.random.normal(jax.random.key(1), (3, *hw, c))
    gd, params = nnx.split(conv)
    probe = jax.random.normal(jax.random.key(3), (3, *hw, c))

    def loss(fn):
        return jax.value_and_grad(lambda p, x: jnp.sum(fn(nnx.merge(gd, p), x) * probe), argnums=(0, 1))

    ref_val, ref_grads = loss(lambda m, x: m(x))(params, x)
    for limit in (gen_codec._DENSE_DW_MAX, 0):     # 0: the dense matrix is never allowed
        monkeypatch.setattr(gen_codec, "_DENSE_DW_MAX", limit)
        val, grads = loss(gen_codec.depthwise_conv)(params, x)
        np.testing.assert_allclose(val, ref_val, rtol=1e-5, atol=1e-4)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dense_limit", ["default", 0])
def test_cpu_depthwise_bf16_sums_in_fp32_and_rounds_once(dense_limit, monkeypatch):
    """In bf16 both CPU depthwise paths equal the fp32 convolution of the bf16-rounded operands
    to within one bf16 rounding (a bf16 running sum of 49 taps is off by several)."""
    from janusflow.models import gen_codec
    from janusflow.models.layers import Conv2d
    if dense_limit == 0:
        monkeypatch.setattr(gen_codec, "_DENSE_DW_MAX", 0)
    c = 16
    conv = Conv2d(c, c, 7, padding=3, groups=c, rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
    conv.bias.set_value(jax.random.normal(jax.random.key(2), (c,)))
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, c)).astype(jnp.bfloat16)
    y = gen_codec.depthwise_conv(conv, x)
    assert y.dtype == jnp.bfloat16
    k = conv.kernel[...].astype(jnp.bfloat16).astype(jnp.float32)
    ref = jax.lax.conv_general_dilated(
        x.astype(jnp.float32), k, (1, 1), ((3, 3), (3, 3)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c, precision="highest")
    ref = np.asarray(ref + conv.bias[...].astype(jnp.bfloat16).astype(jnp.float32))
    err = np.abs(np.asarray(y, np.float32) - ref)
    assert np.all(err <= 2.0 ** -8 * np.abs(ref) * 1.001 + 1e-6), err.max()


def test_bf16_block_keeps_gelu_and_grn_in_fp32():
    """In a bf16 ConvNeXt block Linear 1's fp32 sum goes through GELU and GRN unrounded (XLA:CPU
    runs bf16 elementwise ops slower than fp32) and only Linear 2's operands are bf16."""
    from janusflow.models.gen_codec import ConvNextBlock
    blk = ConvNextBlock(16, 8, CFG_K2, rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
    x, t_emb = jnp.ones((2, 4, 4, 16), jnp.bfloat16), jnp.ones((2, 8), jnp.bfloat16)
    import re
    text = str(jax.make_jaxpr(lambda x, t: blk(x, t))(x, t_emb))    # nested jaxprs included
    erfs = re.findall(r":(\w+)\[[\d,]*\] = erfc? ", text)
    assert erfs and set(erfs) == {"f32"}, erfs
    assert blk(x, t_emb).dtype == jnp.bfloat16
