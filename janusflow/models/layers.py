"""Basic layers shared by every model in janusflow.

Why our own instead of `nnx.Linear` & co: every parameter must carry *logical axis names*
(metadata key ``axes``) so one rules table (``janusflow/parallel/rules.py``) can map them
onto the mesh, and the parameter layout must be obvious enough that importing the official
PyTorch weights is a transpose, never a guess. Layouts:

- ``Linear.kernel``: (in, out)          -- torch ``weight`` is (out, in); the decoders keep it
  as ``Linear.kernel_t`` (out, in) instead (:func:`store_transposed`), and bf16 ones packed in
  12 bits as ``Linear.kernel_p`` (:func:`store_packed`): compute layouts that checkpoints refuse
- ``Conv2d.kernel``: (kh, kw, in/groups, out), inputs NHWC -- torch is OIHW on NCHW
- norms: ``scale`` (and ``bias``) of shape (C,)

Logical axis vocabulary (keep it small; the rules table must know every name):
  LLM:     "vocab", "embed", "mlp", "heads", "kv_heads"
  vision:  "vit_embed", "vit_mlp", "vit_heads"        (SigLIP)
  convs:   "conv_in", "conv_out"                       (gen codec, VAE)
  other:   "norm" (norm scales/biases, replicated), None (never sharded)

Compute dtype: each layer takes ``dtype`` (None = keep the input's dtype). Parameters stay in
their stored dtype (fp32 master weights) and are cast at use; norms always compute in fp32.
Every matmul, einsum, convolution and attention of the models goes through :func:`matmul`,
:func:`einsum`, ``Conv2d`` or :func:`dot_product_attention` here: they accumulate in fp32
and return the compute dtype (see :data:`ACCUMULATE`).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from janusflow.kernels import cpu_gemm, cpu_gemv, cpu_gemv_packed

Axes = tuple


def param(rngs: nnx.Rngs | None, init, shape: Sequence[int], axes: Axes,
          dtype=jnp.float32) -> nnx.Param:
    """An ``nnx.Param`` with logical axis names; ``init(key, shape, dtype)``."""
    shape = tuple(int(s) for s in shape)
    if len(axes) != len(shape):
        raise ValueError(f"axes {axes} do not match parameter shape {shape}")
    key = next_key(rngs.params) if rngs is not None else jax.random.key(0)
    return nnx.Param(init(key, shape, dtype), axes=tuple(axes))


def next_key(stream: nnx.RngStream) -> jax.Array:
    """``stream()``: the same key, the same count update. nnx's own call stores the count with an
    indexed write that, under tracing, asks a tracer for its sharding; jax answers with an error
    message whose origin search walks the whole trace, so building a model cost O(parameters^2)
    (16 s of a 19 s abstract Janus-Pro-1B). A plain ``set_value`` skips that check."""
    count = stream.count[...]
    key = jax.random.fold_in(stream.key[...], count)
    stream.count.set_value(count + 1)
    return key


def normal(std: float):
    return jax.nn.initializers.normal(std)


zeros = jax.nn.initializers.zeros
ones = jax.nn.initializers.ones


def lecun():
    # torch's default Linear/Conv init is kaiming_uniform(a=sqrt(5)) == uniform(+-1/sqrt(fan_in));
    # variance_scaling(1/3, fan_in, uniform) is exactly that distribution.
    return jax.nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


# Products accumulate (and are emitted) in fp32, then cast to the compute dtype. For fp32 this
# changes nothing. For bf16 it is what makes bf16 fast on CPU: XLA:CPU runs a dot with a bf16
# *result* (or an fp32 operand beside a bf16 one) by upcasting both operands to fp32 (slower
# than plain fp32), but one with bf16 operands and an fp32 result on the native bf16 kernels
# (AVX512-BF16 / AMX), ~2x the fp32 rate here (experiments/bf16_cpu.md). TPUs and GPUs
# accumulate bf16 in fp32 anyway.
ACCUMULATE = jnp.float32


def _product(spec, a, b, out_dtype):
    return jnp.einsum(spec, a, b, preferred_element_type=ACCUMULATE).astype(out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def _low_precision_product(spec, a, b, out_dtype):
    return _product(spec, a, b, out_dtype)


def _low_precision_fwd(spec, a, b, out_dtype):
    return _product(spec, a, b, out_dtype), (a, b)


def _low_precision_bwd(spec, out_dtype, res, g):
    # Autodiff would contract the fp32 cotangent of the fp32-accumulated product with a bf16
    # operand: a mixed dot that XLA:CPU runs in fp32. The backward products get the forward's
    # treatment instead: bf16 operands (the cotangent rounded, as autocast does), fp32 sums.
    a, b = res
    g = g.astype(jnp.result_type(a, b))
    ins, out = spec.split("->")
    sa, sb = ins.split(",")
    return _product(f"{out},{sb}->{sa}", g, b, a.dtype), _product(f"{sa},{out}->{sb}", a, g, b.dtype)


_low_precision_product.defvjp(_low_precision_fwd, _low_precision_bwd)


def einsum(spec: str, a, b, out_dtype=None):
    """Two-operand einsum (explicit ``->``, no ellipsis, every operand index also in the other
    operand or the output) accumulated in fp32 and returned in ``out_dtype`` (default: the
    inputs' common dtype). Below fp32 the gradient products accumulate in fp32 too."""
    dtype = jnp.result_type(a, b)
    out_dtype = dtype if out_dtype is None else out_dtype
    if jnp.finfo(dtype).bits >= 32:
        return _product(spec, a, b, out_dtype)
    return _low_precision_product(spec, a, b, out_dtype)


def matmul(x, w, out_dtype=None, impl: str = "xla"):
    """``x @ w`` for x (..., in) and a matrix w (in, out), as :func:`einsum`. ``impl="vendor"``
    runs it on the vendor CPU GEMM (:mod:`janusflow.kernels.cpu_gemm`), ``impl="gemv"`` the
    few-row products on our AVX-512 kernel (:mod:`janusflow.kernels.cpu_gemv`); each is XLA's
    dot off CPU or where it cannot be built."""
    if impl in ("vendor", "gemv"):
        dtype = jnp.result_type(x, w)
        kernel = cpu_gemm.dot if impl == "vendor" else cpu_gemv.dot
        out = kernel(x.astype(dtype), w.astype(dtype))
        return out.astype(dtype if out_dtype is None else out_dtype)
    lead = "abcdefgh"[:x.ndim - 1]
    return einsum(f"{lead}i,io->{lead}o", x, w, out_dtype)


def matmul_t(x, wt, out_dtype=None, impl: str = "xla"):
    """``x @ wt.T`` for x (..., in) and wt (out, in), as :func:`matmul`; ``impl="gemv"`` runs the
    few-row products on the transposed layout's kernel (``cpu_gemv.dot_t``), every other
    ``impl`` XLA's dot."""
    if impl == "gemv":
        dtype = jnp.result_type(x, wt)
        out = cpu_gemv.dot_t(x.astype(dtype), wt.astype(dtype))
        return out.astype(dtype if out_dtype is None else out_dtype)
    lead = "abcdefgh"[:x.ndim - 1]
    return einsum(f"{lead}i,oi->{lead}o", x, wt, out_dtype)


def matmul_packed(x, p, out_dtype=None, impl: str = "xla"):
    """``x @ w.T`` for x (..., in) and w (out, in) packed in 12 bits (``cpu_gemv_packed``), as
    :func:`matmul_t`: ``impl="gemv"`` runs bf16 products of up to ``cpu_gemv_packed.MAX_ROWS``
    rows on the packed kernel, every other product on XLA's dot over the unpacked weights."""
    if impl == "gemv":
        out = cpu_gemv_packed.dot(x, p)
        return out.astype(x.dtype if out_dtype is None else out_dtype)
    return matmul_t(x, cpu_gemv_packed.unpack(p).astype(x.dtype), out_dtype, impl)


def dot_product_attention(q, k, v, mask=None):
    """softmax(q k^T / sqrt(hd)) v over q (B,T,H,hd), k/v (B,S,K,hd) with H % K == 0 (grouped
    queries share a key/value head), mask (B or 1, 1, T, S) bool (True = attend). The same math
    as ``jax.nn.dot_product_attention``'s XLA path (fp32 logits and softmax), with the
    probabilities @ values product also accumulated in fp32 (that path emits it in bf16)."""
    b, t, h, hd = q.shape
    kv = k.shape[2]
    if h % kv:
        raise ValueError(f"attention: {h} query heads not a multiple of {kv} key/value heads")
    qg = q.reshape(b, t, kv, h // kv, hd)
    logits = einsum("btkgd,bskd->bkgts", qg, k, out_dtype=jnp.float32)
    logits = logits * jnp.float32(hd ** -0.5)
    if mask is not None:
        m = jnp.broadcast_to(mask, (mask.shape[0], 1, t, k.shape[1]))[:, :, None]   # (B,1,1,T,S)
        logits = jnp.where(m, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, h, hd)


def _cast(x, dtype):
    return x if dtype is None else x.astype(dtype)


class Linear(nnx.Module):
    def __init__(self, in_features: int, out_features: int, *, axes: Axes = (None, None),
                 use_bias: bool = True, rngs: nnx.Rngs, dtype=None, init=None,
                 param_dtype=jnp.float32, impl: str = "xla"):
        self.in_features, self.out_features = in_features, out_features
        self.dtype, self.impl = dtype, impl
        self.kernel = param(rngs, init or lecun(), (in_features, out_features), axes, param_dtype)
        self.bias = (param(rngs, zeros, (out_features,), axes[-1:], param_dtype)
                     if use_bias else None)

    def __call__(self, x, out_dtype=None):
        """``out_dtype`` (default: the compute dtype) lets a caller that continues in fp32 take
        the fp32 sum as is (XLA:CPU does bf16 elementwise work by converting each op)."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Linear expects last dim {self.in_features}, got shape {x.shape}")
        dtype = self.dtype or x.dtype
        if self.packed:
            y = matmul_packed(x.astype(dtype), self.kernel_p.get_value(), out_dtype or dtype, self.impl)
        elif self.transposed:
            y = matmul_t(x.astype(dtype), self.kernel_t[...].astype(dtype), out_dtype or dtype, self.impl)
        else:
            y = matmul(x.astype(dtype), self.kernel[...].astype(dtype), out_dtype or dtype, self.impl)
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype).astype(y.dtype)
        return y

    @property
    def transposed(self) -> bool:
        """Whether the weights are kept as ``kernel_t`` (out, in) (:func:`store_transposed`)."""
        return "kernel_t" in vars(self)

    @property
    def packed(self) -> bool:
        """Whether the weights are kept packed in 12 bits as ``kernel_p`` (:func:`store_packed`)."""
        return "kernel_p" in vars(self)


class PackedWeight(nnx.Variable):
    """A ``cpu_gemv_packed.PackedWeights`` (a tuple of arrays): not a ``Param``, so nothing that
    trains, shards or saves parameters takes it for one; checkpoints refuse it by type."""


_transpose = jax.jit(jnp.transpose)


def store_transposed(module: nnx.Module) -> None:
    """Keep every :class:`Linear` inside ``module`` as ``kernel_t`` (out, in), in place: the
    layout the decoders' few-row products stream fastest (``cpu_gemv.dot_t``). The same
    products on every path; each old kernel is freed as it goes if nothing else holds it.
    Checkpoints are written from (in, out) kernels: their parameter names refuse this layout."""
    for _, m in nnx.iter_modules(module):
        if isinstance(m, Linear) and not m.transposed and not m.packed:
            k = m.kernel
            meta = dict(k.get_metadata())
            meta["axes"] = tuple(reversed(meta["axes"]))
            # compiled, one at a time: eager ones took 14.5 s instead of 10.5 s for the 1B model in fp32
            m.kernel_t = nnx.Param(jax.block_until_ready(_transpose(k[...])), **meta)
            del m.kernel


def has_transposed(module: nnx.Module) -> bool:
    """Whether any :class:`Linear` inside ``module`` keeps ``kernel_t`` (out, in) or ``kernel_p``."""
    return any(isinstance(m, Linear) and (m.transposed or m.packed) for _, m in nnx.iter_modules(module))


def store_packed(module: nnx.Module) -> int:
    """Keep every transposed :class:`Linear` inside ``module`` whose ``kernel_t`` is bf16 on one
    device with in-features a multiple of 64 (``cpu_gemv_packed.packable``) packed in 12 bits
    as ``kernel_p``, in place; returns how many. Lossless (``cpu_gemv_packed.unpack`` gives the
    weights back bit for bit); each ``kernel_t`` is freed as it goes if nothing else holds it.
    Sharded weights stay as they are: the kernel runs on one device's whole matrix."""
    done = 0
    for _, m in nnx.iter_modules(module):
        if isinstance(m, Linear) and m.transposed:
            k = m.kernel_t[...]
            if cpu_gemv_packed.packable(k) and len(k.sharding.device_set) == 1:
                m.kernel_p = PackedWeight(cpu_gemv_packed.pack(k))
                del m.kernel_t
                done += 1
    return done


def use_matmul(module: nnx.Module, impl: str) -> None:
    """Run every :class:`Linear` inside ``module`` with ``impl`` ("xla" | "vendor" | "gemv")."""
    for _, m in nnx.iter_modules(module):
        if isinstance(m, Linear):
            m.impl = impl


class RMSNorm(nnx.Module):
    """LLaMA RMSNorm: normalise in fp32, cast back, then multiply by the scale (HF order)."""

    def __init__(self, dim: int, eps: float = 1e-6, *, axis_name="norm", rngs=None,
                 param_dtype=jnp.float32):
        self.eps = eps
        self.scale = param(rngs, ones, (dim,), (axis_name,), param_dtype)

    def __call__(self, x):
        dtype = x.dtype
        x32 = x.astype(jnp.float32)
        var = jnp.mean(x32 * x32, axis=-1, keepdims=True)
        y = (x32 * jax.lax.rsqrt(var + self.eps)).astype(dtype)
        return self.scale[...].astype(dtype) * y


class LayerNorm(nnx.Module):
    def __init__(self, dim: int, eps: float = 1e-6, *, axis_name="norm", rngs=None,
                 param_dtype=jnp.float32):
        self.eps = eps
        self.scale = param(rngs, ones, (dim,), (axis_name,), param_dtype)
        self.bias = param(rngs, zeros, (dim,), (axis_name,), param_dtype)

    def __call__(self, x):
        dtype = x.dtype
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...] + self.bias[...]).astype(dtype)


class GroupNorm(nnx.Module):
    """GroupNorm over NHWC inputs, statistics in fp32 (torch semantics, biased variance)."""

    def __init__(self, num_groups: int, dim: int, eps: float = 1e-6, *, rngs=None,
                 param_dtype=jnp.float32):
        if dim % num_groups:
            raise ValueError(f"GroupNorm: {dim} channels not divisible by {num_groups} groups")
        self.num_groups, self.eps = num_groups, eps
        self.scale = param(rngs, ones, (dim,), ("norm",), param_dtype)
        self.bias = param(rngs, zeros, (dim,), ("norm",), param_dtype)

    def __call__(self, x):
        dtype = x.dtype
        *lead, c = x.shape
        g = x.astype(jnp.float32).reshape(*lead[:1], -1, self.num_groups, c // self.num_groups)
        mean = jnp.mean(g, axis=(1, 3), keepdims=True)
        var = jnp.mean(jnp.square(g - mean), axis=(1, 3), keepdims=True)
        y = ((g - mean) * jax.lax.rsqrt(var + self.eps)).reshape(x.shape)
        return (y * self.scale[...] + self.bias[...]).astype(dtype)


class Conv2d(nnx.Module):
    """2-D convolution on NHWC inputs with torch-style symmetric integer padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *,
                 stride: int = 1, padding: int = 0, groups: int = 1, use_bias: bool = True,
                 axes: Axes = ("conv_in", "conv_out"), rngs: nnx.Rngs, dtype=None,
                 param_dtype=jnp.float32):
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: channels {in_channels}->{out_channels} not divisible by groups={groups}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride, self.padding, self.groups, self.dtype = stride, padding, groups, dtype
        shape = (kernel_size, kernel_size, in_channels // groups, out_channels)
        self.kernel = param(rngs, lecun(), shape, (None, None) + tuple(axes), param_dtype)
        self.bias = param(rngs, zeros, (out_channels,), tuple(axes)[-1:], param_dtype) if use_bias else None

    def __call__(self, x):
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"Conv2d expects NHWC input with {self.in_channels} channels, got shape {x.shape}")
        dtype = self.dtype or x.dtype
        p = self.padding
        y = jax.lax.conv_general_dilated(
            x.astype(dtype), self.kernel[...].astype(dtype),
            window_strides=(self.stride, self.stride), padding=((p, p), (p, p)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=self.groups,
            preferred_element_type=ACCUMULATE).astype(dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y


def pixel_shuffle(x, r: int):
    """torch.nn.PixelShuffle on NHWC: channel index c*r*r + i*r + j -> (h*r+i, w*r+j, c)."""
    b, h, w, c = x.shape
    if c % (r * r):
        raise ValueError(f"pixel_shuffle: {c} channels not divisible by {r}^2")
    x = x.reshape(b, h, w, c // (r * r), r, r)
    x = x.transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(b, h * r, w * r, c // (r * r))


def count_params(tree) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(tree))
