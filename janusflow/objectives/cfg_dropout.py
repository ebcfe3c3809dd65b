"""Classifier-free-guidance condition dropout, shared by training and sampling.

An unconditional row keeps the prompt's first ``keep_first`` real tokens (BOS) and masks out
(attention mask False) every other prompt position. The token ids and positions are left
unchanged, so a dropped row lines up position-for-position with its conditional twin, as in the
official demo (``attention_mask[1::2, 1:L] = 0``). The t_emb slot and image tokens are not part of
the prompt mask and always stay visible.

"First real tokens" means the first ``keep_first`` True entries of the mask, not the first
columns: with right padding or none these coincide; with left padding BOS is still kept.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _check_mask(prompt_mask):
    if prompt_mask.ndim != 2:
        raise ValueError(f"prompt_mask must be (batch, prompt_len), got shape {prompt_mask.shape}")


def uncond_prompt_mask(prompt_mask, keep_first: int = 1):
    """The unconditional version of every row of ``prompt_mask`` (B, L) bool: only the first
    ``keep_first`` True positions of each row stay True."""
    _check_mask(prompt_mask)
    if keep_first < 0:
        raise ValueError(f"keep_first must be >= 0, got {keep_first}")
    m = prompt_mask.astype(bool)
    rank = jnp.cumsum(m, axis=1, dtype=jnp.int32)      # 1-based index among real tokens
    return m & (rank <= keep_first)


def drop_prompt(key, prompt_mask, prob: float = 0.1, keep_first: int = 1):
    """Drop each row's condition with probability ``prob``.

    Returns (new_mask (B, L) bool, dropped (B,) bool): dropped rows get
    ``uncond_prompt_mask``, the others are unchanged.
    """
    _check_mask(prompt_mask)
    if isinstance(prob, (int, float)) and not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must be in [0, 1], got {prob}")
    dropped = jax.random.bernoulli(key, prob, (prompt_mask.shape[0],))
    uncond = uncond_prompt_mask(prompt_mask, keep_first)
    new_mask = jnp.where(dropped[:, None], uncond, prompt_mask.astype(bool))
    return new_mask, dropped
