"""SigLIP ViT: JanusFlow's understanding encoder f_enc (and the REPA target).

Mirrors the timm ``VisionTransformer`` that the official ``siglip_vit.py`` builds with
``class_token=False, global_pool="map", ignore_head=True``: patch conv (kernel = stride =
patch) + learned position embedding, ``cfg.depth`` pre-norm blocks (fused qkv with bias, exact
erf GELU -- the official tower hard-codes ``nn.GELU`` and ``LayerNorm(eps=1e-6)``), then the
final LayerNorm. The features are that norm applied to every patch token. The attention-pool
head (timm ``AttentionPoolLatent``) is never used by JanusFlow but is built so that a
checkpoint round-trips unchanged; :meth:`SiglipVisionTower.pool` runs it.

Two torch layouts are supported: the official timm one (:func:`torch_key_map`) and the
transformers ``SiglipVisionModel`` one (:func:`hf_siglip_key_map`). The latter stores q, k, v
separately where timm fuses them, which no per-tensor transform can express, so HF weights go
through :func:`hf_siglip_to_timm_state_dict` first.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from janusflow.checkpoint.torch_layout import CheckpointMismatch, export_state_dict, load_state_dict
from janusflow.config import SiglipConfig
from janusflow.models.attention import VIT_AXES, attend
from janusflow.models.layers import Conv2d, LayerNorm, Linear, normal, param
from janusflow.parallel.rules import constrain

TOKENS = ("batch", "vit_length", "vit_embed")

_REMAT_POLICIES = {
    "block": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


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
        return constrain(self.fc2(h), TOKENS)


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
        qkv = constrain(self.qkv(x).reshape(b, n, 3, h, d // h),
                        ("batch", "vit_length", None, "vit_heads", None))
        o = attend(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], None, self.impl, VIT_AXES)
        o = constrain(o, ("batch", "vit_length", "vit_heads", None))
        return constrain(self.proj(o.reshape(b, n, d)), TOKENS)


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
                 param_dtype=jnp.float32, remat: str = "none", attention_impl: str = "xla"):
        if remat not in ("none", *_REMAT_POLICIES):
            raise ValueError(f"remat must be one of 'none', {', '.join(_REMAT_POLICIES)}; got {remat!r}")
        self.cfg, self.dtype, self.remat = cfg, dtype, remat
        d, p = cfg.width, cfg.patch_size
        self.patch_embed = Conv2d(3, d, p, stride=p, axes=(None, "vit_embed"), rngs=rngs,
                                  dtype=dtype, param_dtype=param_dtype)
        self.pos_embed = param(rngs, normal(0.02), (1, cfg.num_patches, d),
                               (None, None, "vit_embed"), param_dtype)
        self.blocks = nnx.List([Block(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype,
                                      impl=attention_impl) for _ in range(cfg.depth)])
        self.norm = LayerNorm(d, cfg.layer_norm_eps, rngs=rngs, param_dtype=param_dtype)
        self.attn_pool = (AttentionPool(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype,
                                        impl=attention_impl) if cfg.attn_pool else None)

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
        for blk in self.blocks:
            if self.remat != "none":
                x = nnx.remat(lambda m, y: m(y), policy=_REMAT_POLICIES[self.remat])(blk, x)
            else:
                x = blk(x)
        return self.norm(x)

    def pool(self, features):
        """Attention-pool head on the output of ``__call__``: (B, N, width) -> (B, width)."""
        if self.attn_pool is None:
            raise ValueError("this tower was built with cfg.attn_pool=False: it has no pooling head")
        n, d = self.cfg.num_patches, self.cfg.width
        if features.ndim != 3 or features.shape[1:] != (n, d):
            raise ValueError(f"pool expects features (B, {n}, {d}), got shape {features.shape}")
        return self.attn_pool(features)


# ---------------------------------------------------------------------------------------------
# torch layouts


def _linear(m, tkey, path):
    m[f"{tkey}.weight"] = (path + ("kernel",), "linear")
    m[f"{tkey}.bias"] = (path + ("bias",), "plain")


def _norm(m, tkey, path):
    m[f"{tkey}.weight"] = (path + ("scale",), "plain")
    m[f"{tkey}.bias"] = (path + ("bias",), "plain")


def torch_key_map(cfg: SiglipConfig, prefix: str = "") -> dict:
    """Official timm layout (JanusFlow prefix: ``vision_und_enc_model.vision_tower.``)."""
    m: dict = {}
    P = prefix
    m[f"{P}patch_embed.proj.weight"] = (("patch_embed", "kernel"), "conv")
    m[f"{P}patch_embed.proj.bias"] = (("patch_embed", "bias"), "plain")
    m[f"{P}pos_embed"] = (("pos_embed",), "plain")
    for i in range(cfg.depth):
        t, o = f"{P}blocks.{i}", ("blocks", i)
        _norm(m, f"{t}.norm1", o + ("norm1",))
        _linear(m, f"{t}.attn.qkv", o + ("attn", "qkv"))
        _linear(m, f"{t}.attn.proj", o + ("attn", "proj"))
        _norm(m, f"{t}.norm2", o + ("norm2",))
        _linear(m, f"{t}.mlp.fc1", o + ("mlp", "fc1"))
        _linear(m, f"{t}.mlp.fc2", o + ("mlp", "fc2"))
    _norm(m, f"{P}norm", ("norm",))
    if cfg.attn_pool:
        t, o = f"{P}attn_pool", ("attn_pool",)
        m[f"{t}.latent"] = (o + ("latent",), "plain")
        for name in ("q", "kv", "proj"):
            _linear(m, f"{t}.{name}", o + (name,))
        _norm(m, f"{t}.norm", o + ("norm",))
        _linear(m, f"{t}.mlp.fc1", o + ("mlp", "fc1"))
        _linear(m, f"{t}.mlp.fc2", o + ("mlp", "fc2"))
    return m


def hf_siglip_key_map(cfg: SiglipConfig, prefix: str = "") -> dict:
    """transformers ``SiglipVisionModel`` layout, expressed against the timm layout.

    Returns ``{hf_key: ((timm_key, timm_rows, hf_rows), ...)}``: the HF tensor's rows
    ``hf_rows`` (a (start, stop) range along dim 0, None = all) equal rows ``timm_rows`` of the
    timm tensor. timm keys carry no prefix. Not a :func:`torch_key_map` -- fused tensors need
    :func:`hf_siglip_to_timm_state_dict`. transformers 5 keys have no ``vision_model.`` prefix;
    hub checkpoints saved from ``SiglipModel`` (and transformers 4) do: pass
    ``prefix="vision_model."`` for those. HF position embeddings are (N, D), timm's (1, N, D).
    The HF pooling head (probe, ``nn.MultiheadAttention`` with packed q|k|v ``in_proj``,
    layernorm, mlp) computes exactly what timm's ``AttentionPoolLatent`` does.
    """
    d = cfg.width
    whole = lambda tk: ((tk, None, None),)                                        # noqa: E731
    m: dict = {}
    P = prefix

    def same(hk, tk, bias=True):
        suffixes = ("weight", "bias") if bias else ("weight",)
        for s in suffixes:
            m[f"{P}{hk}.{s}"] = whole(f"{tk}.{s}")

    same("embeddings.patch_embedding", "patch_embed.proj")
    m[f"{P}embeddings.position_embedding.weight"] = whole("pos_embed")
    for i in range(cfg.depth):
        h, t = f"encoder.layers.{i}", f"blocks.{i}"
        same(f"{h}.layer_norm1", f"{t}.norm1")
        for j, name in enumerate("qkv"):
            for s in ("weight", "bias"):
                m[f"{P}{h}.self_attn.{name}_proj.{s}"] = ((f"{t}.attn.qkv.{s}", (j * d, (j + 1) * d), None),)
        same(f"{h}.self_attn.out_proj", f"{t}.attn.proj")
        same(f"{h}.layer_norm2", f"{t}.norm2")
        same(f"{h}.mlp.fc1", f"{t}.mlp.fc1")
        same(f"{h}.mlp.fc2", f"{t}.mlp.fc2")
    same("post_layernorm", "norm")
    if cfg.attn_pool:
        m[f"{P}head.probe"] = whole("attn_pool.latent")
        for s, hs in (("weight", "in_proj_weight"), ("bias", "in_proj_bias")):
            m[f"{P}head.attention.{hs}"] = ((f"attn_pool.q.{s}", None, (0, d)),
                                            (f"attn_pool.kv.{s}", None, (d, 3 * d)))
        same("head.attention.out_proj", "attn_pool.proj")
        same("head.layernorm", "attn_pool.norm")
        same("head.mlp.fc1", "attn_pool.mlp.fc1")
        same("head.mlp.fc2", "attn_pool.mlp.fc2")
    return m


def _to_numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):                                   # torch tensor, without importing torch
        a = a.detach().cpu()
        if str(a.dtype) == "torch.bfloat16":
            import ml_dtypes
            import torch
            return a.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return a.numpy()
    return np.asarray(a)


def _rows(a, r):
    return a if r is None else a[r[0]:r[1]]


def _assemble(parts, key):
    """Concatenate (rows, array) pieces that tile dim 0 of one tensor, in row order."""
    parts = sorted(parts, key=lambda p: -1 if p[0] is None else p[0][0])
    if parts[0][0] is None:
        if len(parts) != 1:
            raise CheckpointMismatch(f"{key}: a whole-tensor piece overlaps other pieces")
        return parts[0][1]
    pos = 0
    for r, a in parts:
        if r[0] != pos or r[1] - r[0] != a.shape[0]:
            raise CheckpointMismatch(f"{key}: pieces do not tile rows (gap/overlap at row {pos}, "
                                     f"or a piece of {a.shape[0]} rows for range {r})")
        pos = r[1]
    return np.concatenate([a for _, a in parts], axis=0)


_HF_LAYER = "encoder.layers."


def hf_siglip_to_timm_state_dict(sd: Mapping, cfg: SiglipConfig, *, hf_prefix: str = "",
                                 timm_prefix: str = "") -> dict:
    """transformers ``SiglipVisionModel`` state dict -> official timm layout (numpy arrays).

    Encoder layers at index >= ``cfg.depth`` are dropped (the official tower never builds
    them), as is ``head.*`` when ``cfg.attn_pool`` is False; any other unknown or missing key
    raises :class:`CheckpointMismatch`.
    """
    kmap = hf_siglip_key_map(cfg, hf_prefix)
    missing = [k for k in kmap if k not in sd]
    unexpected = []
    for k in sd:
        if k in kmap:
            continue
        rest = k[len(hf_prefix):] if k.startswith(hf_prefix) else None
        if rest is not None and rest.startswith(_HF_LAYER):
            idx = rest[len(_HF_LAYER):].split(".", 1)[0]
            if idx.isdigit() and cfg.depth <= int(idx) < cfg.num_layers:
                continue
        if rest is not None and rest.startswith("head.") and not cfg.attn_pool:
            continue
        unexpected.append(k)
    if missing or unexpected:
        raise CheckpointMismatch("HF SigLIP -> timm: " + "; ".join(
            s for s in (("missing keys: " + ", ".join(missing)) if missing else "",
                        ("unexpected keys: " + ", ".join(unexpected)) if unexpected else "") if s))
    pieces = defaultdict(list)
    for hk, targets in kmap.items():
        a = _to_numpy(sd[hk])
        for tk, t_rows, h_rows in targets:
            pieces[tk].append((t_rows, _rows(a, h_rows)))
    out = {}
    for tk, parts in pieces.items():
        a = _assemble(parts, tk)
        if tk == "pos_embed":
            a = a.reshape(1, *a.shape)
        out[timm_prefix + tk] = a
    return out


def timm_to_hf_siglip_state_dict(sd: Mapping, cfg: SiglipConfig, *, timm_prefix: str = "",
                                 hf_prefix: str = "") -> dict:
    """Official timm layout -> transformers ``SiglipVisionModel`` (numpy arrays).

    The result has ``cfg.depth`` encoder layers: load it into an HF model configured with
    ``num_hidden_layers=cfg.depth`` (and ``vision_use_head=cfg.attn_pool``).
    """
    kmap = hf_siglip_key_map(cfg, hf_prefix)
    needed = {tk for targets in kmap.values() for tk, _, _ in targets}
    expected = {timm_prefix + tk for tk in needed}
    missing = sorted(expected - set(sd))
    unexpected = sorted(set(sd) - expected)
    if missing or unexpected:
        raise CheckpointMismatch("timm -> HF SigLIP: " + "; ".join(
            s for s in (("missing keys: " + ", ".join(missing)) if missing else "",
                        ("unexpected keys: " + ", ".join(unexpected)) if unexpected else "") if s))
    out = {}
    for hk, targets in kmap.items():
        parts = []
        for tk, t_rows, h_rows in targets:
            a = _to_numpy(sd[timm_prefix + tk])
            if tk == "pos_embed":
                a = a.reshape(a.shape[1:])
            parts.append((h_rows, _rows(a, t_rows)))
        out[hk] = _assemble(parts, hk)
    return out


def load_hf_siglip(tower: SiglipVisionTower, sd: Mapping, *, prefix: str = "", dtype=None) -> None:
    """Load a transformers ``SiglipVisionModel`` state dict into ``tower`` (strict)."""
    timm_sd = hf_siglip_to_timm_state_dict(sd, tower.cfg, hf_prefix=prefix)
    load_state_dict(tower, timm_sd, torch_key_map(tower.cfg), dtype=dtype)


def export_hf_siglip(tower: SiglipVisionTower, *, prefix: str = "") -> dict:
    """``tower``'s parameters as a transformers ``SiglipVisionModel`` state dict (numpy)."""
    timm_sd = export_state_dict(tower, torch_key_map(tower.cfg))
    return timm_to_hf_siglip_state_dict(timm_sd, tower.cfg, hf_prefix=prefix)
