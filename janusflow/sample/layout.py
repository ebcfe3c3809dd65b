"""The layer layout token-by-token decoding is fast with: one block per layer.

A model built with ``scan_layers=True`` keeps each layer's weights stacked along a leading axis.
That is the right layout for training and for whole-sequence passes, but inside a loop that
feeds one token per step XLA:CPU slices every layer's weights out of the stack into a fresh
buffer on every token, and a step at small batch is bound by reading those weights
(experiments/janus_pro_speed.md, #26). Both decoders (image tokens in ``ar_generate``, answers
in ``chat``) therefore relay a scanned model out once, before their loops, and on CPU keep the
dense layers' weights as (out, in) and run the step's matrix-vector products and its attention
over the cache on our AVX-512 kernels (:func:`decoding_model`); bf16 weights are kept packed in
12 bits there (lossless, 25% fewer bytes streamed per token: ``kernels/cpu_gemv_packed.py``).
Callers that decode repeatedly make that layout once (:func:`decoding_layout`) and keep it.
"""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from janusflow.configs.schema import ModelConfig
from janusflow.kernels import cpu_decode_attention, cpu_decode_block, cpu_gemv, cpu_gemv_packed
from janusflow.models.layers import has_transposed, store_packed, store_transposed, use_matmul
from janusflow.models.llm import use_attention


def per_layer_model(model, cfg: ModelConfig):
    """``(model, cfg)`` with the LLM (and SigLIP) as one block per layer; unchanged if it
    already is. The same weights: a stacked model's arrays are sliced into per-layer ones (one
    copy of them while the old model lives), so callers that decode repeatedly relay out once
    and keep the result."""
    if not getattr(model.language_model, "scan", False):
        return model, cfg
    from janusflow.checkpoint.model_io import relayout
    return relayout(model, dataclasses.replace(cfg, scan_layers=True), False)


def decoding_config(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with the kernels the token-by-token loops run on here: on CPU, our AVX-512
    decoding kernels where the config has XLA's defaults: the dense layers' products of <= 8
    rows (``matmul_impl="gemv"``, kernels/cpu_gemv.py: a step's weights streamed at the
    memory's speed) and the LLM's one-position attention over the KV cache
    (``attention_impl="cpu_decode"``, kernels/cpu_decode_attention.py: no transposed copies of
    the cache), with blocks whose weights are packed run as one call per step
    (``"cpu_block"``, kernels/cpu_decode_block.py). Explicit choices ("vendor", "splash", ...)
    are kept; a kernel that cannot be built here is not chosen."""
    if jax.default_backend() != "cpu":
        return cfg
    if cfg.matmul_impl == "xla" and cpu_gemv.available():
        cfg = dataclasses.replace(cfg, matmul_impl="gemv")
    if cfg.attention_impl == "xla" and cpu_decode_attention.available():
        cfg = dataclasses.replace(cfg, attention_impl="cpu_block" if cpu_decode_block.available() else "cpu_decode")
    return cfg


def transposes(cfg: ModelConfig) -> bool:
    """Whether the decoders keep the dense layers' weights as (out, in) here: when their
    products run on our kernel (:func:`decoding_config`), whose (out, in) form streams them
    faster (bf16: 1.13-1.23x alone, 1.05x in the AR loop; experiments/janus_pro_speed.md)."""
    return decoding_config(cfg).matmul_impl == "gemv" and cpu_gemv.available_t()


def decoding_layout(model, cfg: ModelConfig, pack: bool = True):
    """``(model, cfg)`` in the layout the decoders run: one block per layer
    (:func:`per_layer_model`), and where :func:`transposes`, every dense layer's weights as
    (out, in) (``layers.store_transposed``), bf16 ones on one device packed in 12 bits unless
    ``pack=False`` (``layers.store_packed``: the same weights bit for bit, 25% fewer bytes per
    token). The caller's model is unchanged; the new layout copies the dense layers' weights
    (freed with the old model), so callers that decode repeatedly make this once and drop the
    model they had. Already in this layout: returned as is. Not for training or saving:
    checkpoints refuse it."""
    relaid, cfg = per_layer_model(model, cfg)
    if not transposes(cfg) or has_transposed(relaid):
        return relaid, cfg
    # a model relaid out here is ours to change; the caller's gets a new module tree
    out = relaid if relaid is not model else nnx.merge(*nnx.split(model))
    store_transposed(out)
    if pack and cpu_gemv_packed.available():
        store_packed(out)
    return out, cfg


def decoding_model(model, cfg: ModelConfig):
    """``(model, cfg)`` as the token-by-token loops run it: :func:`decoding_layout` on the
    kernels of :func:`decoding_config` (products of more rows than a kernel takes and the
    prompt's attention stay on XLA inside them). The caller's model unchanged; a view of it
    when it already is in the decoders' layout (:func:`decoding_layout`), else a copy of its
    dense layers' weights for the call."""
    model, cfg = decoding_layout(model, cfg)
    dcfg = decoding_config(cfg)
    if dcfg == cfg:
        return model, cfg
    view = nnx.merge(*nnx.split(model))
    if dcfg.matmul_impl != cfg.matmul_impl:
        use_matmul(view, dcfg.matmul_impl)
    if dcfg.attention_impl != cfg.attention_impl:
        use_attention(view.language_model, dcfg.attention_impl)
    return view, dcfg
