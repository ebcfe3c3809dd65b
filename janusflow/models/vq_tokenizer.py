"""Janus-Pro's VQ-16 image tokenizer (LlamaGen's VQGAN as released in deepseek-ai/Janus
``vq_model.py``): encoder -> 1x1 quant_conv -> nearest l2-normalised codebook entry (the image
tokens) and codes -> codebook -> 1x1 post_quant_conv -> decoder.

Attribute names follow the official module (``conv_blocks.i.res.j``, ``mid.k``, ``quantize.
embedding``) so its key map is a rename of leaves. The blocks are the SDXL-VAE's
(``models/vae.py``): the same GroupNorm(eps 1e-6) + SiLU residual block, bottom/right-padded
stride-2 downsampling, nearest x2 upsampling and one-head spatial attention with a 1/sqrt(C)
scale. Images are NHWC in [-1, 1].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from janusflow.configs.schema import VQConfig
from janusflow.models.layers import Conv2d, GroupNorm, param
from janusflow.models.vae import Downsample, ResnetBlock, SpatialAttention, Upsample
from janusflow.parallel.rules import IMAGE_FEATURES, constrain

_EPS = 1e-6


class _Level(nnx.Module):
    """One resolution: ``res`` blocks, ``attn`` after each at the lowest resolution only, then
    an optional resampler (official ``conv_blocks[i]``)."""

    def __init__(self, cin, cout, n, groups, attention: bool, resample, *, rngs, dtype=None):
        self.res = nnx.List([ResnetBlock(cin if j == 0 else cout, cout, groups, rngs=rngs, dtype=dtype)
                             for j in range(n)])
        self.attn = nnx.List([SpatialAttention(cout, groups, rngs=rngs, dtype=dtype)
                              for _ in range(n)] if attention else [])
        self.downsample = Downsample(cout, rngs=rngs, dtype=dtype) if resample == "down" else None
        self.upsample = Upsample(cout, rngs=rngs, dtype=dtype) if resample == "up" else None

    def __call__(self, x):
        for j, r in enumerate(self.res):
            x = r(x)
            if len(self.attn):
                x = self.attn[j](x)
        for s in (self.downsample, self.upsample):
            if s is not None:
                x = constrain(s(x), IMAGE_FEATURES)
        return x


def _mid(c, groups, *, rngs, dtype):
    return nnx.List([ResnetBlock(c, c, groups, rngs=rngs, dtype=dtype),
                     SpatialAttention(c, groups, rngs=rngs, dtype=dtype),
                     ResnetBlock(c, c, groups, rngs=rngs, dtype=dtype)])


class VQEncoder(nnx.Module):
    def __init__(self, cfg: VQConfig, *, rngs, dtype=None):
        ch = [cfg.base_channels * m for m in cfg.channel_mult]
        g, n, last = cfg.norm_groups, cfg.num_res_blocks, len(ch) - 1
        self.conv_in = Conv2d(3, cfg.base_channels, 3, padding=1, rngs=rngs, dtype=dtype)
        cins = [cfg.base_channels] + ch[:-1]
        self.conv_blocks = nnx.List([
            _Level(cins[i], ch[i], n, g, i == last, "down" if i < last else None, rngs=rngs, dtype=dtype)
            for i in range(len(ch))])
        self.mid = _mid(ch[-1], g, rngs=rngs, dtype=dtype)
        self.norm_out = GroupNorm(g, ch[-1], _EPS, rngs=rngs)
        self.conv_out = Conv2d(ch[-1], cfg.z_channels, 3, padding=1, rngs=rngs, dtype=dtype)

    def __call__(self, x):
        x = constrain(self.conv_in(x), IMAGE_FEATURES)
        for level in self.conv_blocks:
            x = level(x)
        for m in self.mid:
            x = m(x)
        return self.conv_out(nnx.silu(self.norm_out(x)))


class VQDecoder(nnx.Module):
    def __init__(self, cfg: VQConfig, *, rngs, dtype=None):
        ch = [cfg.base_channels * m for m in cfg.channel_mult][::-1]
        g, n, last = cfg.norm_groups, cfg.num_res_blocks, len(ch) - 1
        self.conv_in = Conv2d(cfg.z_channels, ch[0], 3, padding=1, rngs=rngs, dtype=dtype)
        self.mid = _mid(ch[0], g, rngs=rngs, dtype=dtype)
        cins = [ch[0]] + ch[:-1]
        # the official decoder's level 0 is the lowest resolution (attention there), one more
        # residual block per level than the encoder
        self.conv_blocks = nnx.List([
            _Level(cins[i], ch[i], n + 1, g, i == 0, "up" if i < last else None, rngs=rngs, dtype=dtype)
            for i in range(len(ch))])
        self.norm_out = GroupNorm(g, ch[-1], _EPS, rngs=rngs)
        self.conv_out = Conv2d(ch[-1], 3, 3, padding=1, rngs=rngs, dtype=dtype)

    def __call__(self, z):
        x = constrain(self.conv_in(z), IMAGE_FEATURES)
        for m in self.mid:
            x = m(x)
        for level in self.conv_blocks:
            x = level(x)
        return self.conv_out(nnx.silu(self.norm_out(x)))


def _l2_normalize(x, eps=1e-12):
    # torch F.normalize: x / max(||x||, eps)
    n = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True))
    return (x / jnp.maximum(n, eps)).astype(x.dtype)


class VectorQuantizer(nnx.Module):
    """Nearest codebook entry by squared distance; with ``l2_norm`` both the codebook and the
    encoder output are unit vectors first (then the distance ranks like cosine similarity)."""

    def __init__(self, cfg: VQConfig, *, rngs):
        self.cfg = cfg
        n = cfg.codebook_size
        # the official init: U(-1/n, 1/n), l2-normalised in use
        init = lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -1.0 / n, 1.0 / n)  # noqa: E731
        self.embedding = param(rngs, init, (n, cfg.embed_dim), (None, None))

    def codebook(self):
        e = self.embedding[...]
        return _l2_normalize(e) if self.cfg.l2_norm else e

    def nearest(self, z):
        """z (..., embed_dim) -> (codes (...) int32, z as compared (fp32, l2-normalised with
        ``l2_norm``), its codebook entries (fp32, differentiable in the codebook)): what the
        codebook and commitment losses of VQ training compare (``objectives/vq.py``)."""
        e = self.codebook().astype(jnp.float32)
        zf = z.astype(jnp.float32)
        if self.cfg.l2_norm:
            zf = _l2_normalize(zf)
        d = (jnp.sum(zf ** 2, -1, keepdims=True) + jnp.sum(e ** 2, -1)
             - 2 * jnp.einsum("...d,nd->...n", zf, e, precision=jax.lax.Precision.HIGHEST))
        codes = jnp.argmin(jax.lax.stop_gradient(d), axis=-1).astype(jnp.int32)
        return codes, zf, e[codes]

    def quantize(self, z):
        """z (..., embed_dim) -> (codes (...), int32; z_q (...), embed_dim) with the
        straight-through gradient to z."""
        codes, zf, zq = self.nearest(z)
        return codes, zf + jax.lax.stop_gradient(zq - zf)

    def lookup(self, codes):
        return self.codebook()[codes]


class VQTokenizer(nnx.Module):
    def __init__(self, cfg: VQConfig, *, rngs, dtype=None):
        self.cfg = cfg
        self.encoder = VQEncoder(cfg, rngs=rngs, dtype=dtype)
        self.decoder = VQDecoder(cfg, rngs=rngs, dtype=dtype)
        self.quantize = VectorQuantizer(cfg, rngs=rngs)
        self.quant_conv = Conv2d(cfg.z_channels, cfg.embed_dim, 1, rngs=rngs, dtype=dtype)
        self.post_quant_conv = Conv2d(cfg.embed_dim, cfg.z_channels, 1, rngs=rngs, dtype=dtype)

    def _check(self, images):
        f = self.cfg.downsample
        if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] % f or images.shape[2] % f:
            raise ValueError(f"VQ encode: expected NHWC RGB images with sides divisible by {f}, "
                             f"got shape {images.shape}")

    def encode(self, images):
        """Images (B, H, W, 3) in [-1, 1] -> (codes (B, H/f * W/f) int32 in raster order,
        quantised latents (B, H/f, W/f, embed_dim))."""
        codes, zq = self.quantize.quantize(self.encode_latents(images))
        return codes.reshape(codes.shape[0], -1), zq

    def encode_latents(self, images):
        """Images -> the encoder's output after quant_conv, before quantisation (B, h, w, embed_dim)."""
        self._check(images)
        return self.quant_conv(self.encoder(images))

    def decode_latents(self, zq):
        return self.decoder(self.post_quant_conv(zq.astype(self.post_quant_conv.kernel.dtype)))

    def decode_codes(self, codes, grid: int | None = None):
        """codes (B, N) in raster order -> images (B, H, W, 3), nominally [-1, 1] (not clipped)."""
        b, n = codes.shape
        g = grid or int(round(n ** 0.5))
        if g * g != n:
            raise ValueError(f"VQ decode: {n} codes do not form a square grid; pass grid=")
        return self.decode_latents(self.quantize.lookup(codes).reshape(b, g, g, -1))
