"""The layer layout token-by-token decoding is fast with: one block per layer.

A model built with ``scan_layers=True`` keeps each layer's weights stacked along a leading axis.
That is the right layout for training and for whole-sequence passes, but inside a loop that
feeds one token per step XLA:CPU slices every layer's weights out of the stack into a fresh
buffer on every token, and a step at small batch is bound by reading those weights
(experiments/janus_pro_speed.md, #26). Both decoders (image tokens in ``ar_generate``, answers
in ``chat``) therefore relay a scanned model out once, before their loops.
"""

from __future__ import annotations

import dataclasses

from janusflow.configs.schema import ModelConfig


def per_layer_model(model, cfg: ModelConfig):
    """``(model, cfg)`` with the LLM (and SigLIP) as one block per layer; unchanged if it
    already is. The same weights: a stacked model's arrays are sliced into per-layer ones (one
    copy of them while the old model lives), so callers that decode repeatedly relay out once
    and keep the result."""
    if not getattr(model.language_model, "scan", False):
        return model, cfg
    from janusflow.checkpoint.model_io import relayout
    return relayout(model, dataclasses.replace(cfg, scan_layers=True), False)
