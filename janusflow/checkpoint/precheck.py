"""Checks of a checkpoint that run before any model is built or any weight is trusted.

:func:`check_config_against_headers`: an official ``config.json`` against the tensor names and
shapes of its weight files (headers only). Building even the abstract model costs time in
proportion to the layer counts ``config.json`` claims, so a config claiming 1,000 LLM layers
over weights holding 24 would spend minutes before the first key comparison; here every
repeated structure's count and the LLM's sizes are compared first, and a disagreement is one
line naming the ``config.json`` field and the weight file.

:func:`all_finite`: a tensor holds no NaN/inf (checked per tensor while streaming, so a
corrupt checkpoint is refused instead of sampling black images).
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping

import numpy as np

from janusflow.checkpoint.torch_layout import CheckpointMismatch

# (checkpoint key prefix before a layer index, the config.json field that sets the count)
REPEATED = (
    ("language_model.model.layers.", "language_config.num_hidden_layers"),
    ("vision_und_enc_model.vision_tower.blocks.", "vision_und_enc_config.params (layers, select_layer)"),
    ("vision_gen_enc_model.mid_block.res_blocks.", "vision_gen_enc_config.params.layers_in_middle"),
    ("vision_gen_dec_model.mid_block.res_blocks.", "vision_gen_dec_config.params.layers_in_middle"),
    ("vision_gen_dec_model.out_convs.", "vision_gen_dec_config.params.upsamples"),
)
_CHUNK = 1 << 24       # elements per isfinite pass: bounds the temporary mask to 16 MB


def _indices(keys: Iterable[str], prefix: str) -> set:
    out = set()
    for k in keys:
        if k.startswith(prefix):
            i = k[len(prefix):].split(".", 1)[0]
            if i.isdigit():
                out.add(int(i))
    return out


def _describe(idx: set, prefix: str) -> str:
    if not idx:
        return "none"
    s = sorted(idx)
    if s == list(range(len(s))):
        return f"{len(s)} ({prefix}0..{s[-1]})"
    shown = ", ".join(map(str, s[:5])) + (", ..." if len(s) > 5 else "")
    return f"{len(s)} ({prefix}{{{shown}}})"


def _llm_sizes(llm) -> list:
    """(checkpoint key, torch shape config.json implies, the fields that set it)."""
    p, h, d = "language_model.model.", llm.hidden_size, llm.dim_per_head
    return [(f"{p}embed_tokens.weight", (llm.vocab_size, h), "vocab_size, hidden_size"),
            (f"{p}layers.0.mlp.gate_proj.weight", (llm.intermediate_size, h), "intermediate_size"),
            (f"{p}layers.0.self_attn.q_proj.weight", (llm.num_heads * d, h),
             "num_attention_heads, head_dim"),
            (f"{p}layers.0.self_attn.k_proj.weight", (llm.num_kv_heads * d, h),
             "num_key_value_heads, head_dim")]


def weight_files_name(files: Iterable[str]) -> str:
    names = sorted({os.path.basename(f) for f in files})
    return names[0] if len(names) == 1 else f"{names[0]} (+{len(names) - 1} more shards)"


def check_config_against_headers(cfg, expected_keys: Iterable[str], shapes: Mapping[str, tuple],
                                 config_file: str, weights: str) -> None:
    """Raise one-line :class:`CheckpointMismatch` if ``config_file`` (parsed into ``cfg``, whose
    key map gives ``expected_keys``) disagrees with the checkpoint's ``shapes`` (key -> torch
    shape, from the headers of ``weights``) on a layer count or an LLM size. Cost: one pass
    over the key names; no model is built."""
    expected_keys = list(expected_keys)
    for prefix, field in REPEATED:
        want, got = _indices(expected_keys, prefix), _indices(shapes, prefix)
        if want != got:
            raise CheckpointMismatch(
                f"{config_file}: {field} gives {_describe(want, prefix)} layers, but {weights} "
                f"holds {_describe(got, prefix)}: config.json does not describe these weights")
    for key, want, fields in _llm_sizes(cfg.llm):
        if key in shapes and tuple(shapes[key]) != want:
            raise CheckpointMismatch(
                f"{config_file}: language_config ({fields}) implies {key} of shape {want}, but "
                f"{weights} holds {tuple(shapes[key])}")


def all_finite(a: np.ndarray) -> bool:
    """No NaN/inf in ``a`` (numpy, including ml_dtypes bfloat16), checked in chunks so the
    temporary mask stays small even for the embedding table."""
    flat = np.asarray(a).reshape(-1)
    return all(bool(np.isfinite(flat[i:i + _CHUNK]).all()) for i in range(0, flat.size, _CHUNK))
