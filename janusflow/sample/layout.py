"""The layer layout token-by-token decoding is fast with: one block per layer.

A model built with ``scan_layers=True`` keeps each layer's weights stacked along a leading axis.
That is the right layout for training and for whole-sequence passes, but inside a loop that
feeds one token per step XLA:CPU slices every layer's weights out of the stack into a fresh
buffer on every token, and a step at small batch is bound by reading those weights
(experiments/janus_pro_speed.md, #26). Both decoders (image tokens in ``ar_generate``, answers
in ``chat``) therefore relay a scanned model out once, before their loops, and on CPU run the
step's matrix-vector products on our AVX-512 kernel (:func:`decoding_model`).
"""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from janusflow.configs.schema import ModelConfig
from janusflow.kernels import cpu_gemv
from janusflow.models.layers import use_matmul


def per_layer_model(model, cfg: ModelConfig):
    """``(model, cfg)`` with the LLM (and SigLIP) as one block per layer; unchanged if it
    already is. The same weights: a stacked model's arrays are sliced into per-layer ones (one
    copy of them while the old model lives), so callers that decode repeatedly relay out once
    and keep the result."""
    if not getattr(model.language_model, "scan", False):
        return model, cfg
    from janusflow.checkpoint.model_io import relayout
    return relayout(model, dataclasses.replace(cfg, scan_layers=True), False)


def decoding_model(model, cfg: ModelConfig):
    """``(model, cfg)`` as the token-by-token loops run it: one block per layer
    (:func:`per_layer_model`), and on CPU the dense layers of the default ``matmul_impl="xla"``
    on our AVX-512 decoding kernel (``kernels/cpu_gemv.py``: a step's products of <= 8 rows
    stream the weights at the memory's speed; every larger product, the prefill's, stays XLA's
    dot). A view: the same arrays, the caller's model unchanged. An explicit ``matmul_impl``
    ("vendor", "gemv") is kept; without the kernel (no g++, no AVX-512) it is XLA's dot."""
    model, cfg = per_layer_model(model, cfg)
    if cfg.matmul_impl != "xla" or jax.default_backend() != "cpu" or not cpu_gemv.available():
        return model, cfg
    view = nnx.merge(*nnx.split(model))
    use_matmul(view, "gemv")
    return view, dataclasses.replace(cfg, matmul_impl="gemv")
