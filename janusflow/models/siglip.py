"""SigLIP ViT: JanusFlow's understanding encoder f_enc (and the REPA target).

Mirrors the timm ``VisionTransformer`` that the official ``siglip_vit.py`` builds with
``class_token=False, global_pool="map", ignore_head=True``: patch conv (kernel = stride =
patch) + learned position embedding, ``cfg.depth`` pre-norm blocks (fused qkv with bias, exact
erf GELU -- the official tower hard-codes ``nn.GELU`` and ``LayerNorm(eps=1e-6)``), then the
final LayerNorm. The features are that norm applied to every patch token. The attention-pool
head (timm ``AttentionPoolLatent``) is never used by JanusFlow but is built so that a
checkpoint round-trips unchanged; :meth:`SiglipVisionTower.pool` runs it.

Its checkpoint layouts (the official timm one and transformers' ``SiglipVisionModel``) are in
:mod:`janusflow.checkpoint.key_maps`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from janusflow.configs.schema import SiglipConfig
from janusflow.models import remat as remat_lib
from janusflow.models.attention import VIT_AXES, attend
from janusflow.models.layer_stack import scan_layers, stack_layers
from janusflow.models.layers import Conv2d, LayerNorm, Linear, normal, param, use_matmul
from janusflow.parallel.rules import constrain

TOKENS = ("batch", "vit_length", "vit_embed")


def normalize(images01, cfg: SiglipConfig):
    """Map [0, 1] NHWC images to the tower's input range: (x - pixel_mean) / pixel_std."""
    if images01.ndim != 4 or images01.shape[-1] != 3:
        raise ValueError(f"normalize expects NHWC images with 3 channels, got shape {images01.shape}")
    mean = jnp.asarray(cfg.pixel_mean, images01.dtype)
    std = jnp.asarray(cfg.pixel_std, images01.dtype)
    return (images01 - mean) / std


class Mlp(nnx.Module):
    def __init__(self, dim: int, hidden: int, *, rngs, dtype=None, param_dtype=jnp.float32):
        self.fc1 = Linear(dim, hidden, axes=("vit_embed", "vit_mlp"), rngs=rngs, dtype=dtype,
                          param_dtype=param_dtype)
        self.fc2 = Linear(hidden, dim, axes=("vit_mlp", "vit_embed"), rngs=rngs, dtype=dtype,
                          param_dtype=param_dtype)

    def __call__(self, x):
        h = constrain(jax.nn.gelu(self.fc1(x), approximate=False), ("batch", "vit_length", "vit_mlp"))
        h = remat_lib.tag(h, remat_lib.MLP_HIDDEN)
        return constrain(remat_lib.tag(self.fc2(h), remat_lib.MLP_OUT), TOKENS)


class Attention(nnx.Module):
    def __init__(self, cfg: SiglipConfig, *, rngs, dtype=None, param_dtype=jnp.float32,
                 impl: str = "xla"):
        d = cfg.width
        self.num_heads, self.impl = cfg.num_heads, impl
        # The fused output axis interleaves q|k|v, so a "vit_heads" split of it would not follow
        # head boundaries; it stays unsharded on that axis (the input axis still shards).
        self.qkv = Linear(d, 3 * d, axes=("vit_embed", None), rngs=rngs, dtype=dtype,
                          param_dtype=param_dtype)
        self.proj = Linear(d, d, axes=("vit_heads", "vit_embed"), rngs=rngs, dtype=dtype,
                           param_dtype=param_dtype)

    def __call__(self, x):
        b, n, d = x.shape
        h = self.num_heads
        # the fused projection carries all three names' role: it is saved with "query_proj"
        qkv = constrain(remat_lib.tag(self.qkv(x), remat_lib.QUERY).reshape(b, n, 3, h, d // h),
                        ("batch", "vit_length", None, "vit_heads", None))
        o = attend(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], None, self.impl, VIT_AXES)
        o = constrain(o, ("batch", "vit_length", "vit_heads", None))
        return constrain(remat_lib.tag(self.proj(o.reshape(b, n, d)), remat_lib.OUT), TOKENS)


class Block(nnx.Module):
    def __init__(self, cfg: SiglipConfig, *, rngs, dtype=None, param_dtype=jnp.float32,
                 impl: str = "xla"):
        eps = cfg.layer_norm_eps
        self.norm1 = LayerNorm(cfg.width, eps, rngs=rngs, param_dtype=param_dtype)
        self.attn = Attention(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype, impl=impl)
        self.norm2 = LayerNorm(cfg.width, eps, rngs=rngs, param_dtype=param_dtype)
        self.mlp = Mlp(cfg.width, cfg.mlp_dim, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, x):
        x = constrain(x + self.attn(self.norm1(x)), TOKENS)
        return constrain(x + self.mlp(self.norm2(x)), TOKENS)


class AttentionPool(nnx.Module):
    """timm ``AttentionPoolLatent`` (one latent query, ``pool_type='token'``)."""

    def __init__(self, cfg: SiglipConfig, *, rngs, dtype=None, param_dtype=jnp.float32,
                 impl: str = "xla"):
        d = cfg.width
        self.num_heads, self.impl, self.dtype = cfg.num_heads, impl, dtype
        self.latent = param(rngs, normal(d ** -0.5), (1, 1, d), (None, None, "vit_embed"), param_dtype)
        self.q = Linear(d, d, axes=("vit_embed", "vit_heads"), rngs=rngs, dtype=dtype,
                        param_dtype=param_dtype)
        self.kv = Linear(d, 2 * d, axes=("vit_embed", None), rngs=rngs, dtype=dtype,
                         param_dtype=param_dtype)
        self.proj = Linear(d, d, axes=("vit_heads", "vit_embed"), rngs=rngs, dtype=dtype,
                           param_dtype=param_dtype)
        self.norm = LayerNorm(d, cfg.layer_norm_eps, rngs=rngs, param_dtype=param_dtype)
        self.mlp = Mlp(d, cfg.mlp_dim, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, x):
        b, n, d = x.shape
        h = self.num_heads
        dtype = self.dtype or x.dtype
        q = self.q(self.latent[...].astype(dtype))                   # (1, 1, d)
        q = jnp.broadcast_to(q, (b, 1, d)).reshape(b, 1, h, d // h)
        kv = self.kv(x.astype(dtype)).reshape(b, n, 2, h, d // h)
        o = attend(q, kv[:, :, 0], kv[:, :, 1], None, self.impl, VIT_AXES).reshape(b, 1, d)
        o = self.proj(o)
        o = o + self.mlp(self.norm(o))
        return o[:, 0]


class SiglipVisionTower(nnx.Module):
    """SigLIP ViT returning (B, num_patches, width) patch features.

    Input: NHWC pixels of shape (B, image_size, image_size, 3), *already normalised* with
    ``cfg.pixel_mean/std`` (see :func:`normalize`), so the data pipeline owns normalisation.
    Only ``cfg.depth`` blocks exist: ``select_layer`` is applied at build time, as in the
    official ``create_siglip_vit``, and the final norm follows the last built block.
    """

    def __init__(self, cfg: SiglipConfig, *, rngs: nnx.Rngs, dtype=None,
                 param_dtype=jnp.float32, remat: str = "none", attention_impl: str = "xla",
                 scan: bool = False, matmul_impl: str = "xla"):
        if remat != "none":
            remat_lib.policy(remat)          # an unknown name fails here, not at the first call
        self.cfg, self.dtype, self.remat, self.scan = cfg, dtype, remat, scan
        d, p = cfg.width, cfg.patch_size
        self.patch_embed = Conv2d(3, d, p, stride=p, axes=(None, "vit_embed"), rngs=rngs,
                                  dtype=dtype, param_dtype=param_dtype)
        self.pos_embed = param(rngs, normal(0.02), (1, cfg.num_patches, d),
                               (None, None, "vit_embed"), param_dtype)
        blocks = [Block(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype, impl=attention_impl)
                  for _ in range(cfg.depth)]
        # scan: one Block with stacked parameters (layer_stack.py); else one Block per layer
        self.blocks = stack_layers(blocks) if scan else nnx.List(blocks)
        self.norm = LayerNorm(d, cfg.layer_norm_eps, rngs=rngs, param_dtype=param_dtype)
        self.attn_pool = (AttentionPool(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype,
                                        impl=attention_impl) if cfg.attn_pool else None)
        use_matmul(self, matmul_impl)

    def _check_pixels(self, pixels):
        s = self.cfg.image_size
        if pixels.ndim != 4:
            raise ValueError(f"SigLIP expects NHWC pixels (B, {s}, {s}, 3), got rank {pixels.ndim} "
                             f"shape {pixels.shape}")
        if pixels.shape[-1] != 3:
            raise ValueError(f"SigLIP expects 3 channels (NHWC, channels last), got {pixels.shape[-1]} "
                             f"in shape {pixels.shape}")
        if pixels.shape[1:3] != (s, s):
            raise ValueError(f"SigLIP expects image size {s}x{s}, got {pixels.shape[1]}x{pixels.shape[2]} "
                             f"in shape {pixels.shape}")

    def __call__(self, pixels):
        self._check_pixels(pixels)
        dtype = self.dtype or pixels.dtype
        x = self.patch_embed(pixels.astype(dtype))
        b = x.shape[0]
        # row-major flatten of the (h, w) grid = torch's flatten(2) of NCHW
        x = constrain(x.reshape(b, -1, self.cfg.width) + self.pos_embed[...].astype(dtype), TOKENS)
        if self.scan:
            x, _ = scan_layers(self.blocks, x, lambda blk, y, _: (blk(y), None), start=0,
                               stop=self.cfg.depth, remat=self.remat)
            return self.norm(x)
        step = remat_lib.call_block(self.remat)
        for blk in self.blocks:
            x = step(blk, x)
        return self.norm(x)

    def pool(self, features):
        """Attention-pool head on the output of ``__call__``: (B, N, width) -> (B, width)."""
        if self.attn_pool is None:
            raise ValueError("this tower was built with cfg.attn_pool=False: it has no pooling head")
        n, d = self.cfg.num_patches, self.cfg.width
        if features.ndim != 3 or features.shape[1:] != (n, d):
            raise ValueError(f"pool expects features (B, {n}, {d}), got shape {features.shape}")
        return self.attn_pool(features)
