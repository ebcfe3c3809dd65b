"""JanusFlow's generation encoder g_enc and decoder g_dec (official ``ShallowUViTEncoder`` /
``ShallowUViTDecoder`` in ``janus/janusflow/models/uvit.py``), NHWC.

g_enc: VAE latent z_t (B, H, W, latent) and the timestep -> (x_emb (B, g, g, C), t_emb (B, D)).
x_emb is both the U-Net skip and, through an aligner that lives outside this module, the image
tokens fed to the LLM. g_dec: the LLM's image hidden states mapped back to (B, g, g, C) by the
caller, the skip and t_emb -> the velocity (B, H, W, latent).

Both are a stack of time-conditioned ConvNeXt blocks (see :class:`ConvNextBlock`); the decoder
runs them at 2C channels on ``concat([norm(x), skip])`` and upsamples with RMSNorm + 1x1 conv +
pixel shuffle stages.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from janusflow.configs.schema import GenCodecConfig
from janusflow.models import remat as remat_lib
from janusflow.models.layers import (ACCUMULATE, Conv2d, Linear, RMSNorm, einsum, param, pixel_shuffle,
                                     zeros)
from janusflow.parallel.rules import IMAGE_FEATURES as FEATURES, constrain

# Fixed by the official block (not in config.json): 7x7 depthwise conv, GRN epsilon.
DW_KERNEL = 7
GRN_EPS = 1e-6


def timestep_embedding(t, dim: int, max_period: float = 10000.0):
    """Sinusoidal embedding, cos half first: diffusers ``Timesteps(dim, flip_sin_to_cos=True,
    downscale_freq_shift=0)``. ``t`` (B,) is the raw value fed to the sinusoid (JanusFlow feeds
    t*1000). Always fp32: at t*1000 the phases need more mantissa than bf16 has."""
    t = jnp.asarray(t, jnp.float32)
    if t.ndim != 1:
        raise ValueError(f"timestep_embedding expects t of shape (B,), got {t.shape}")
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    phase = t[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.cos(phase), jnp.sin(phase)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


# Largest (h*w)^2 * C a dense depthwise matrix may have (fp32 elements, 64 MB): a tiny 8x8 grid
# at 128 channels needs 0.5M, the 1.3B's 24x24 grid at 1536 channels 510M (not used there).
_DENSE_DW_MAX = 16 * 2 ** 20


@functools.lru_cache(maxsize=None)
def _dense_dw_index(h: int, w: int, k: int, p: int) -> np.ndarray:
    """(h*w, h*w) int32: entry [out, in] is the kernel tap (dy*k + dx) linking the two pixels
    of a stride-1 k x k conv with zero padding p, or k*k (a zero tap) where none does."""
    oy, ox = np.divmod(np.arange(h * w), w)
    dy = oy[None, :] - oy[:, None] + p            # [out, in]: input row - output row + p
    dx = ox[None, :] - ox[:, None] + p
    ok = (dy >= 0) & (dy < k) & (dx >= 0) & (dx < k)
    return np.where(ok, dy * k + dx, k * k).astype(np.int32)


def depthwise_conv(conv: Conv2d, x):
    """``conv(x)`` for a stride-1 depthwise ``Conv2d`` (groups == channels). XLA:CPU runs
    ``feature_group_count=C`` convolutions ~10x slower than the alternatives (measured: 1536
    ch, 24x24, batch 2: 690 ms vs 50 ms), so on CPU it is computed either
      - on small grids, as one batched matmul with the dense (h*w, h*w) matrix of each channel's
        kernel: the forward + backward of a tiny-config ConvNeXt block (8x8 grid, 128 ch,
        batch 16) takes 13 ms instead of 38 ms with the shifted sum below, whose backward
        XLA:CPU runs poorly; or
      - as a sum of k*k shifted, per-channel-scaled copies of the padded input (one fused
        elementwise loop), where the dense matrix would be too large.
    Other backends keep the native convolution. Below fp32 both sum in fp32 and round once at
    the end, as the native convolution does: XLA:CPU computes each bf16 elementwise op by
    converting to fp32 and back, so the 49-tap shifted sum in bf16 was 4x slower than in fp32
    (24x24 grid, 1536 ch, batch 16: 0.90 s vs 0.20 s) and rounded 49 times."""
    if jax.default_backend() != "cpu" or conv.stride != 1 or conv.groups != conv.in_channels:
        return conv(x)
    if x.ndim != 4 or x.shape[-1] != conv.in_channels:
        raise ValueError(f"Conv2d expects NHWC input with {conv.in_channels} channels, got shape {x.shape}")
    dtype = conv.dtype or x.dtype
    kernel = conv.kernel[...].astype(dtype)                  # (k, k, 1, C)
    k, p = kernel.shape[0], conv.padding
    b, h, w, c = x.shape
    x = x.astype(dtype)
    if h + 2 * p - k + 1 == h and w + 2 * p - k + 1 == w and (h * w) ** 2 * c <= _DENSE_DW_MAX:
        taps = jnp.concatenate([kernel.reshape(k * k, c), jnp.zeros((1, c), dtype)], axis=0)
        dense = taps[_dense_dw_index(h, w, k, p)]           # (h*w out, h*w in, C)
        y = einsum("bqc,pqc->bpc", x.reshape(b, h * w, c), dense,
                   out_dtype=ACCUMULATE).reshape(b, h, w, c)
    else:
        # operands rounded to the compute dtype first (as the convolution's are), then summed in fp32
        xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0))).astype(ACCUMULATE)
        k32 = kernel.astype(ACCUMULATE)
        ho, wo = xp.shape[1] - k + 1, xp.shape[2] - k + 1
        y = sum(xp[:, i:i + ho, j:j + wo, :] * k32[i, j, 0] for i in range(k) for j in range(k))
    if conv.bias is not None:
        y = y + conv.bias[...].astype(dtype).astype(ACCUMULATE)
    return y.astype(dtype)


class ConvNextBlock(nnx.Module):
    """y = x + Lin2(GRN(GELU(Lin1(RMSNorm(DWConv7x7(x))))));  out = y*(1+scale) + shift
    with (scale, shift) = Linear(SiLU(t_emb)). The modulation follows the residual add, as in
    the official block (unlike adaLN-style blocks that modulate inside the branch)."""

    def __init__(self, channels: int, cond_dim: int, cfg: GenCodecConfig, *, rngs: nnx.Rngs,
                 dtype=None):
        hidden = channels * cfg.res_ffn_factor
        self.channels, self.cond_dim, self.dtype = channels, cond_dim, dtype
        self.depthwise = Conv2d(channels, channels, DW_KERNEL, padding=DW_KERNEL // 2,
                                groups=channels, use_bias=cfg.use_bias, axes=(None, "conv_out"),
                                rngs=rngs, dtype=dtype)
        self.norm = RMSNorm(channels, cfg.norm_eps, rngs=rngs)
        # The wide (hidden) dim is "conv_out" in both linears so a rule that shards conv_out
        # gives the column-then-row split with no resharding in between.
        self.linear_1 = Linear(channels, hidden, axes=("conv_in", "conv_out"),
                               use_bias=cfg.use_bias, rngs=rngs, dtype=dtype)
        self.grn_gamma = param(rngs, zeros, (hidden,), ("norm",))
        self.grn_beta = param(rngs, zeros, (hidden,), ("norm",))
        self.linear_2 = Linear(hidden, channels, axes=("conv_out", "conv_in"),
                               use_bias=cfg.use_bias, rngs=rngs, dtype=dtype)
        self.cond_embeds_mapper = Linear(cond_dim, 2 * channels, axes=("embed", "conv_out"),
                                         use_bias=cfg.use_bias, rngs=rngs, dtype=dtype)

    def grn(self, x, out_dtype=None):
        """ConvNeXt-V2 global response norm (official variant: nx = gx / (mean_c gx + eps),
        out = gamma * x * nx + beta + x). Statistics in fp32; returns ``out_dtype`` (default:
        x's)."""
        x32 = x.astype(jnp.float32)
        gx = jnp.sqrt(jnp.sum(x32 * x32, axis=(1, 2), keepdims=True))
        nx = gx / (jnp.mean(gx, axis=-1, keepdims=True) + GRN_EPS)
        y = self.grn_gamma[...] * (x32 * nx) + self.grn_beta[...] + x32
        return y.astype(out_dtype or x.dtype)

    def __call__(self, x, t_emb):
        # every intermediate pinned: the conv weights' channel axis is FSDP-sharded, and an
        # unpinned intermediate follows it (full batch, split channels) and is gathered back
        h = constrain(depthwise_conv(self.depthwise, constrain(x, FEATURES)), FEATURES)
        h = constrain(self.norm(h), FEATURES)
        # Linear 1 -> GELU -> GRN stay in fp32 and round once before Linear 2: at 4x width this
        # is the block's largest elementwise work, which XLA:CPU runs slower in bf16 than fp32
        h = constrain(jax.nn.gelu(self.linear_1(h, out_dtype=jnp.float32), approximate=False), FEATURES)
        h = remat_lib.tag(h, remat_lib.MLP_HIDDEN)
        dtype = self.dtype or x.dtype
        h = constrain(remat_lib.tag(self.linear_2(constrain(self.grn(h, dtype), FEATURES)), remat_lib.MLP_OUT),
                      FEATURES)
        y = x + h.astype(x.dtype)
        cond = constrain(self.cond_embeds_mapper(jax.nn.silu(t_emb)), ("batch", "channels"))
        scale, shift = jnp.split(cond, 2, axis=-1)
        return constrain(y * (1 + scale[:, None, None, :]) + shift[:, None, None, :], FEATURES)


class Unpatchify(nnx.Module):
    """RMSNorm -> 1x1 conv to out*p^2 channels -> pixel shuffle(p): one x p upsampling stage."""

    def __init__(self, in_channels: int, out_channels: int, patch: int, cfg: GenCodecConfig, *,
                 rngs: nnx.Rngs, dtype=None):
        self.patch = patch
        self.norm = RMSNorm(in_channels, cfg.norm_eps, rngs=rngs)
        self.unpatch_conv = Conv2d(in_channels, out_channels * patch * patch, 1,
                                   use_bias=cfg.use_bias, rngs=rngs, dtype=dtype)

    def __call__(self, x):
        return constrain(pixel_shuffle(self.unpatch_conv(self.norm(x)), self.patch), FEATURES)


def _check_t_emb(t_emb, batch: int, hidden: int, who: str):
    if t_emb.shape != (batch, hidden):
        raise ValueError(f"{who}: t_emb must have shape (B={batch}, hidden={hidden}), "
                         f"got {t_emb.shape}")


class GenEncoder(nnx.Module):
    """g_enc. ``__call__(z, t)``: z (B, H, W, latent) NHWC, t (B,) the timestep value fed to the
    sinusoid -- the caller passes t*1000 with JanusFlow's t in [0, 1] (t=0 noise, t=1 data).
    Returns (x_emb (B, H/stride, W/stride, channels), t_emb (B, hidden_size))."""

    def __init__(self, cfg: GenCodecConfig, *, latent_channels: int, hidden_size: int,
                 rngs: nnx.Rngs, dtype=None, remat: str = "none"):
        c = cfg.channels
        self.cfg, self.latent_channels, self.hidden_size = cfg, latent_channels, hidden_size
        self.dtype, self.remat = dtype, remat
        self.time_linear_1 = Linear(c, hidden_size, axes=(None, "embed"), use_bias=cfg.use_bias,
                                    rngs=rngs, dtype=dtype)
        self.time_linear_2 = Linear(hidden_size, hidden_size, axes=("embed", None),
                                    use_bias=cfg.use_bias, rngs=rngs, dtype=dtype)
        # Official in_conv is a default nn.Conv2d: always has a bias, whatever use_bias says.
        self.in_conv = Conv2d(latent_channels, c, cfg.kernel_size, stride=cfg.stride,
                              padding=cfg.in_padding, use_bias=True, rngs=rngs, dtype=dtype)
        self.blocks = nnx.List([ConvNextBlock(c, hidden_size, cfg, rngs=rngs, dtype=dtype)
                                for _ in range(cfg.num_blocks)])

    def grid_size(self, size: int) -> int:
        """Token-grid side for a latent side ``size``; ValueError unless the decoder can undo it
        exactly (size divisible by the stride and the conv giving size/stride)."""
        k, s, p = self.cfg.kernel_size, self.cfg.stride, self.cfg.in_padding
        out = (size + 2 * p - k) // s + 1 if size + 2 * p >= k else 0
        if size % s or out != size // s:
            raise ValueError(f"GenEncoder: latent side {size} must be a positive multiple of the "
                             f"stride {s} (kernel {k}, padding {p} gives {out} instead of "
                             f"{size / s:g})")
        return out

    def time_embedding(self, t, dtype=None):
        """t (B,) -> t_emb (B, hidden). The sinusoid is cast to the compute dtype before the MLP,
        as the official encoder casts it to the latent's dtype."""
        t = jnp.asarray(t)
        if t.ndim != 1:
            raise ValueError(f"GenEncoder: t must have shape (B,), got {t.shape}")
        dtype = dtype or self.dtype or jnp.float32
        emb = constrain(timestep_embedding(t, self.cfg.channels).astype(dtype), ("batch", "channels"))
        h = constrain(jax.nn.silu(self.time_linear_1(emb)), ("batch", "embed"))
        return constrain(self.time_linear_2(h), ("batch", "embed"))

    def __call__(self, z, t):
        if z.ndim != 4:
            raise ValueError(f"GenEncoder: z must be NHWC (B, H, W, {self.latent_channels}), "
                             f"got shape {z.shape}")
        if z.shape[-1] != self.latent_channels:
            raise ValueError(f"GenEncoder: z must have {self.latent_channels} latent channels "
                             f"(NHWC, last axis), got shape {z.shape}")
        t = jnp.asarray(t)
        if t.shape != (z.shape[0],):
            raise ValueError(f"GenEncoder: t must have shape (B,) = ({z.shape[0]},) matching z, "
                             f"got {t.shape}")
        self.grid_size(z.shape[1])
        self.grid_size(z.shape[2])
        dtype = self.dtype or z.dtype
        t_emb = self.time_embedding(t, dtype)
        x = constrain(self.in_conv(z.astype(dtype)), FEATURES)
        step = remat_lib.call_block(self.remat)
        for block in self.blocks:
            x = step(block, x, t_emb)
        return x, t_emb


class GenDecoder(nnx.Module):
    """g_dec. ``__call__(x, skip, t_emb)``: x (B, g, g, channels) = LLM image hidden states after
    the final norm and the decoder aligner, reshaped to the grid by the caller; skip = the
    encoder's x_emb; t_emb from the encoder. Returns the velocity (B, g*p^n, g*p^n, latent)."""

    def __init__(self, cfg: GenCodecConfig, *, latent_channels: int, hidden_size: int,
                 rngs: nnx.Rngs, dtype=None, remat: str = "none"):
        c = cfg.channels
        self.cfg, self.latent_channels, self.hidden_size = cfg, latent_channels, hidden_size
        self.dtype, self.remat = dtype, remat
        self.input_norm = RMSNorm(c, cfg.norm_eps, rngs=rngs)
        self.blocks = nnx.List([ConvNextBlock(2 * c, hidden_size, cfg, rngs=rngs, dtype=dtype)
                                for _ in range(cfg.num_blocks)])
        n = cfg.decoder_upsamples
        # Official channel plan: the first stage reads the 2C concat, later stages C; every
        # stage but the last writes C.
        self.out_convs = nnx.List([
            Unpatchify(2 * c if i == 0 else c, latent_channels if i == n - 1 else c,
                       cfg.decoder_patch, cfg, rngs=rngs, dtype=dtype)
            for i in range(n)])

    def __call__(self, x, skip, t_emb):
        c = self.cfg.channels
        if x.ndim != 4 or x.shape[-1] != c:
            raise ValueError(f"GenDecoder: x must be NHWC (B, g, g, {c}), got shape {x.shape}")
        if skip.shape != x.shape:
            raise ValueError(f"GenDecoder: skip must have the same shape as x {x.shape}, "
                             f"got {skip.shape}")
        _check_t_emb(t_emb, x.shape[0], self.hidden_size, "GenDecoder")
        dtype = self.dtype or x.dtype
        h = constrain(jnp.concatenate([self.input_norm(x.astype(dtype)), skip.astype(dtype)], axis=-1),
                      FEATURES)
        t_emb = t_emb.astype(dtype)
        step = remat_lib.call_block(self.remat)
        for block in self.blocks:
            h = step(block, h, t_emb)
        for stage in self.out_convs:
            h = stage(h)
        return h
