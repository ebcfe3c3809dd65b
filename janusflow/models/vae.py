"""SDXL-VAE (diffusers ``AutoencoderKL``) in Flax NNX, plus an identity "pixel" VAE.

The module tree mirrors the diffusers attribute names one for one (``encoder.down_blocks.0.
resnets.1.norm2`` ...), so the torch key map is a rename of the leaf (``weight`` -> ``kernel``
or ``scale``) and never a guess. The VAE is frozen in JanusFlow; it only has to reproduce the
public weights' function. Everything is NHWC; torch is NCHW.

Numerics that differ from a naive port and matter for parity:
- downsampling pads (0, 1, 0, 1) -- bottom/right only -- then a stride-2 3x3 conv without
  padding (the original LDM convention, kept by diffusers as ``downsample_padding=0``);
- the mid-block attention is one head of width C over all H*W positions, with its own
  GroupNorm in front and a residual around it (``rescale_output_factor`` 1);
- logvar is clamped to [-30, 20] before use, as ``DiagonalGaussianDistribution`` does.

fp16 is known to overflow in this VAE (SDXL-VAE is usually run upcast); use fp32 or bf16.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from janusflow.configs.schema import VAEConfig
from janusflow.models.layers import Conv2d, GroupNorm, Linear, dot_product_attention
from janusflow.parallel.rules import IMAGE_FEATURES, constrain

_EPS = 1e-6          # every norm in the diffusers VAE uses 1e-6
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


class ResnetBlock(nnx.Module):
    """Pre-norm residual block without time embedding (diffusers ``ResnetBlock2D``)."""

    def __init__(self, cin: int, cout: int, groups: int, *, rngs, dtype=None):
        self.norm1 = GroupNorm(groups, cin, _EPS, rngs=rngs)
        self.conv1 = Conv2d(cin, cout, 3, padding=1, rngs=rngs, dtype=dtype)
        self.norm2 = GroupNorm(groups, cout, _EPS, rngs=rngs)
        self.conv2 = Conv2d(cout, cout, 3, padding=1, rngs=rngs, dtype=dtype)
        # diffusers adds the 1x1 shortcut only when the width changes
        self.conv_shortcut = Conv2d(cin, cout, 1, rngs=rngs, dtype=dtype) if cin != cout else None

    def __call__(self, x):
        h = self.conv1(nnx.silu(self.norm1(x)))
        h = self.conv2(nnx.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return constrain(x + h, IMAGE_FEATURES)


class Downsample(nnx.Module):
    def __init__(self, c: int, *, rngs, dtype=None):
        self.conv = Conv2d(c, c, 3, stride=2, padding=0, rngs=rngs, dtype=dtype)

    def __call__(self, x):
        # asymmetric pad: an even H becomes exactly H/2 and the last row/col sees the zero pad
        return self.conv(jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0))))


class Upsample(nnx.Module):
    def __init__(self, c: int, *, rngs, dtype=None):
        self.conv = Conv2d(c, c, 3, padding=1, rngs=rngs, dtype=dtype)

    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)   # nearest-neighbour x2
        return self.conv(x)


class SpatialAttention(nnx.Module):
    """Single-head self-attention over the H*W positions (diffusers ``Attention`` as built
    by ``UNetMidBlock2D`` with ``attention_head_dim == channels``)."""

    def __init__(self, c: int, groups: int, *, rngs, dtype=None):
        axes = ("conv_in", "conv_out")
        self.group_norm = GroupNorm(groups, c, _EPS, rngs=rngs)
        self.to_q = Linear(c, c, axes=axes, rngs=rngs, dtype=dtype)
        self.to_k = Linear(c, c, axes=axes, rngs=rngs, dtype=dtype)
        self.to_v = Linear(c, c, axes=axes, rngs=rngs, dtype=dtype)
        # a list so the parameter path is ``to_out.0`` like the torch key (index 1 is Dropout)
        self.to_out = nnx.List([Linear(c, c, axes=axes, rngs=rngs, dtype=dtype)])

    def __call__(self, x):
        b, h, w, c = x.shape
        y = self.group_norm(x).reshape(b, h * w, c)
        q, k, v = (p(y)[:, :, None, :] for p in (self.to_q, self.to_k, self.to_v))
        # the XLA path computes the softmax in fp32 (diffusers: upcast_softmax=True)
        o = dot_product_attention(q, k, v).reshape(b, h * w, c)
        return constrain(x + self.to_out[0](o).reshape(b, h, w, c), IMAGE_FEATURES)


class MidBlock(nnx.Module):
    """resnet -> (attention) -> resnet, at the lowest resolution (``UNetMidBlock2D``)."""

    def __init__(self, c: int, groups: int, add_attention: bool, *, rngs, dtype=None):
        self.resnets = nnx.List([ResnetBlock(c, c, groups, rngs=rngs, dtype=dtype)
                                 for _ in range(2)])
        self.attentions = nnx.List([SpatialAttention(c, groups, rngs=rngs, dtype=dtype)]
                                   if add_attention else [])

    def __call__(self, x):
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class _Stage(nnx.Module):
    """``DownEncoderBlock2D`` / ``UpDecoderBlock2D``: resnets, then an optional resampler
    under the diffusers attribute name (``downsamplers`` or ``upsamplers``)."""

    def __init__(self, cin: int, cout: int, n: int, groups: int, resample: str | None, *,
                 rngs, dtype=None):
        self.resnets = nnx.List([ResnetBlock(cin if i == 0 else cout, cout, groups,
                                             rngs=rngs, dtype=dtype) for i in range(n)])
        self.downsamplers = nnx.List([Downsample(cout, rngs=rngs, dtype=dtype)]
                                     if resample == "down" else [])
        self.upsamplers = nnx.List([Upsample(cout, rngs=rngs, dtype=dtype)]
                                   if resample == "up" else [])

    def __call__(self, x):
        for r in self.resnets:
            x = r(x)
        for s in (*self.downsamplers, *self.upsamplers):
            x = constrain(s(x), IMAGE_FEATURES)
        return x


class Encoder(nnx.Module):
    def __init__(self, cfg: VAEConfig, *, rngs, dtype=None):
        ch, g, n = tuple(cfg.block_out_channels), cfg.norm_num_groups, cfg.layers_per_block
        self.conv_in = Conv2d(cfg.in_channels, ch[0], 3, padding=1, rngs=rngs, dtype=dtype)
        self.down_blocks = nnx.List([
            _Stage(ch[max(i - 1, 0)], ch[i], n, g, "down" if i < len(ch) - 1 else None,
                   rngs=rngs, dtype=dtype) for i in range(len(ch))])
        self.mid_block = MidBlock(ch[-1], g, cfg.mid_block_add_attention, rngs=rngs, dtype=dtype)
        self.conv_norm_out = GroupNorm(g, ch[-1], _EPS, rngs=rngs)
        self.conv_out = Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1, rngs=rngs, dtype=dtype)

    def __call__(self, x):
        x = constrain(self.conv_in(x), IMAGE_FEATURES)
        for blk in self.down_blocks:
            x = blk(x)
        x = self.mid_block(x)
        return self.conv_out(nnx.silu(self.conv_norm_out(x)))


class Decoder(nnx.Module):
    def __init__(self, cfg: VAEConfig, *, rngs, dtype=None):
        ch, g, n = tuple(cfg.block_out_channels), cfg.norm_num_groups, cfg.layers_per_block
        rev = ch[::-1]
        self.conv_in = Conv2d(cfg.latent_channels, rev[0], 3, padding=1, rngs=rngs, dtype=dtype)
        self.mid_block = MidBlock(rev[0], g, cfg.mid_block_add_attention, rngs=rngs, dtype=dtype)
        self.up_blocks = nnx.List([
            _Stage(rev[max(i - 1, 0)], rev[i], n + 1, g, "up" if i < len(rev) - 1 else None,
                   rngs=rngs, dtype=dtype) for i in range(len(rev))])
        self.conv_norm_out = GroupNorm(g, ch[0], _EPS, rngs=rngs)
        self.conv_out = Conv2d(ch[0], cfg.in_channels, 3, padding=1, rngs=rngs, dtype=dtype)

    def __call__(self, z):
        x = self.mid_block(constrain(self.conv_in(z), IMAGE_FEATURES))
        for blk in self.up_blocks:
            x = blk(x)
        return self.conv_out(nnx.silu(self.conv_norm_out(x)))


def _check_input(x, channels: int, what: str, multiple: int = 1):
    if x.ndim != 4:
        raise ValueError(f"VAE {what}: expected NHWC (rank 4), got shape {x.shape}")
    if x.shape[-1] != channels:
        raise ValueError(f"VAE {what}: expected {channels} channels (NHWC, last axis), "
                         f"got {x.shape[-1]} channels in shape {x.shape}")
    if x.shape[1] % multiple or x.shape[2] % multiple:
        raise ValueError(f"VAE {what}: height and width must be multiples of {multiple} "
                         f"(the downsampling factor), got {x.shape[1]}x{x.shape[2]}")


class AutoencoderKL(nnx.Module):
    def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs, dtype=None):
        if cfg.kind != "kl":
            raise ValueError(f"AutoencoderKL needs VAEConfig.kind='kl', got {cfg.kind!r}")
        self.cfg, self.dtype = cfg, dtype
        lc = cfg.latent_channels
        self.encoder = Encoder(cfg, rngs=rngs, dtype=dtype)
        self.decoder = Decoder(cfg, rngs=rngs, dtype=dtype)
        self.quant_conv = Conv2d(2 * lc, 2 * lc, 1, rngs=rngs, dtype=dtype) if cfg.use_quant_conv else None
        self.post_quant_conv = Conv2d(lc, lc, 1, rngs=rngs, dtype=dtype) if cfg.use_post_quant_conv else None

    def _cast(self, x):
        return x if self.dtype is None else x.astype(self.dtype)

    def encode(self, x):
        """Images NHWC in [-1, 1] -> posterior (mean, logvar), each (B, H/f, W/f, latent)."""
        _check_input(x, self.cfg.in_channels, "encode input", self.cfg.downsample)
        h = self.encoder(self._cast(x))
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        mean, logvar = jnp.split(h, 2, axis=-1)
        return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)

    def decode(self, z):
        """Unscaled latents NHWC -> images NHWC (nominally [-1, 1], not clipped)."""
        _check_input(z, self.cfg.latent_channels, "decode input")
        z = self._cast(z)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)


class PixelVAE(nnx.Module):
    """Identity "VAE" for tiny configs: the latent is the image. No parameters.

    ``encode`` returns the image as the mean and the clamp floor (-30) as logvar, i.e. the most
    deterministic posterior the KL VAE can express; ``encode_latents`` uses the mean for it.
    """

    def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs | None = None, dtype=None):
        if cfg.kind != "pixel":
            raise ValueError(f"PixelVAE needs VAEConfig.kind='pixel', got {cfg.kind!r}")
        self.cfg, self.dtype = cfg, dtype

    def _cast(self, x):
        return x if self.dtype is None else x.astype(self.dtype)

    def encode(self, x):
        _check_input(x, self.cfg.channels, "encode input")
        x = self._cast(x)
        return x, jnp.full_like(x, LOGVAR_MIN)

    def decode(self, z):
        _check_input(z, self.cfg.channels, "decode input")
        return self._cast(z)


def make_vae(cfg: VAEConfig, *, rngs: nnx.Rngs, dtype=None):
    return (PixelVAE if cfg.kind == "pixel" else AutoencoderKL)(cfg, rngs=rngs, dtype=dtype)


def encode_latents(vae, cfg: VAEConfig, images, rng=None):
    """Images NHWC in [-1, 1] -> ``(z - shift_factor) * scaling_factor``.

    ``z`` is the posterior mean when ``rng`` is None (or for the pixel VAE, whose posterior is
    a point), otherwise one sample ``mean + exp(logvar / 2) * eps``.
    """
    mean, logvar = vae.encode(images)
    z = mean
    if rng is not None and cfg.kind != "pixel":
        eps = jax.random.normal(rng, mean.shape, jnp.float32).astype(mean.dtype)
        z = mean + jnp.exp(0.5 * logvar) * eps
    return (z - cfg.shift_factor) * cfg.scaling_factor


def decode_latents(vae, cfg: VAEConfig, latents):
    """Inverse of :func:`encode_latents`' scaling, then decode to NHWC images."""
    return vae.decode(latents / cfg.scaling_factor + cfg.shift_factor)
