"""Autoregressive (next-token) cross-entropy for understanding and text samples.

Layout: ``targets[b, i]`` is the token that position ``i`` must predict, i.e. the token at
``i + 1`` of the input. The caller shifts (``shift_targets`` does the standard shift), so
``logits``, ``targets`` and ``loss_mask`` are all aligned position by position.

The loss is returned as ``(loss_sum, count)`` rather than a mean so the caller can divide by
the number of valid tokens of the *global* batch. Under ``jit`` over a sharded batch the
plain sum of a global array already is global; inside ``shard_map`` psum both terms first.
Averaging per-device or per-example means instead would weight short answers more.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from janusflow.parallel.rules import constrain


def shift_targets(ids, loss_mask):
    """Standard next-token shift: (ids (B, T), loss_mask (B, T)) -> (targets, mask), both (B, T).

    ``loss_mask`` marks the tokens to be *predicted* (e.g. the answer tokens) at their own
    positions. Position i then predicts ``ids[:, i + 1]`` and counts iff ``loss_mask[:, i + 1]``;
    the last position has nothing to predict and is always masked (its target is 0).
    """
    if ids.ndim != 2:
        raise ValueError(f"ids must be (batch, seq), got shape {ids.shape}")
    if loss_mask.shape != ids.shape:
        raise ValueError(f"loss_mask shape {loss_mask.shape} != ids shape {ids.shape}")
    b = ids.shape[0]
    targets = jnp.concatenate([ids[:, 1:], jnp.zeros((b, 1), ids.dtype)], axis=1)
    mask = jnp.concatenate([loss_mask[:, 1:].astype(bool), jnp.zeros((b, 1), bool)], axis=1)
    return targets, mask


def token_nll(logits, targets):
    """Per-position negative log-likelihood (B, T) in fp32; targets are clipped into the vocab
    so ignore-index values (e.g. -100) at masked positions cannot produce NaN/garbage gathers."""
    logits = logits.astype(jnp.float32)
    v = logits.shape[-1]
    lse = jax.nn.logsumexp(logits, axis=-1)
    idx = jnp.clip(targets.astype(jnp.int32), 0, v - 1)
    picked = jnp.take_along_axis(logits, idx[..., None], axis=-1)[..., 0]
    return lse - picked


def ar_loss(logits, targets, loss_mask):
    """Next-token cross entropy: (logits (B, T, V), targets (B, T) int, loss_mask (B, T))
    -> (loss_sum, count), fp32 scalars.

    ``targets[b, i]`` is the token following position i (see ``shift_targets``). Only positions
    with ``loss_mask`` true contribute, to the sum and to the count. Mean = sum / count after any
    cross-device reduction (``safe_mean`` guards count == 0).
    """
    if logits.ndim != 3:
        raise ValueError(f"logits must be (batch, seq, vocab), got shape {logits.shape}")
    if targets.shape != logits.shape[:2]:
        raise ValueError(f"targets shape {targets.shape} != logits (batch, seq) {logits.shape[:2]}")
    if loss_mask.shape != targets.shape:
        raise ValueError(f"loss_mask shape {loss_mask.shape} != targets shape {targets.shape}")
    mask = loss_mask.astype(bool)
    nll = token_nll(logits, targets)
    # where, not multiply: a non-finite value at a masked position must not leak into the sum.
    loss_sum = jnp.sum(jnp.where(mask, nll, 0.0))
    return loss_sum, jnp.sum(mask, dtype=jnp.float32)


def answer_positions(loss_mask, max_positions: int):
    """The first ``max_positions`` positions of each row where ``loss_mask`` (B, T) is true:
    (idx (B, K) int32, valid (B, K) bool, overflow (B,) bool: the row has more than K)."""
    mask = loss_mask.astype(bool)
    k = max_positions
    idx = jax.vmap(lambda m: jnp.nonzero(m, size=k, fill_value=0)[0])(mask).astype(jnp.int32)
    n = jnp.sum(mask, axis=1, dtype=jnp.int32)
    return idx, jnp.arange(k)[None, :] < n[:, None], n > k


def ar_loss_at_answers(logits_fn, hidden, targets, loss_mask, max_positions: int):
    """``ar_loss`` without the (B, T, vocab) logits: the hidden states of the positions a loss
    reads (at most ``max_positions`` per row, a static bound) are gathered first and only their
    logits computed, (B, K, vocab). Sum and count equal ``ar_loss(logits_fn(hidden), ...)``.

    A row with more than ``max_positions`` predicted tokens makes the sum NaN rather than
    silently dropping tokens (the train step then refuses the update and names the loss).
    ``max_positions >= T`` is the full computation."""
    b, t, _ = hidden.shape
    if max_positions >= t:
        return ar_loss(logits_fn(hidden), targets, loss_mask)
    if max_positions < 1:
        raise ValueError(f"max_positions must be >= 1, got {max_positions}")
    idx, valid, overflow = answer_positions(loss_mask, max_positions)
    # pinned to the batch sharding: the per-row gather's output and the logits (and so their
    # gradients) would otherwise be gathered over the whole batch for the lm_head's gradient
    h = constrain(jnp.take_along_axis(hidden, idx[..., None], axis=1), ("batch", "length", "embed"))
    tgt = jnp.take_along_axis(targets, idx, axis=1)
    logits = constrain(logits_fn(h).astype(jnp.float32), ("batch", "length", "vocab"))
    loss_sum, count = ar_loss(logits, tgt, valid)
    bad = jnp.any(overflow)
    return jnp.where(bad, jnp.nan, loss_sum), jnp.sum(loss_mask, dtype=jnp.float32)


def safe_mean(loss_sum, count):
    """sum / count, or 0 when nothing was counted (e.g. a global batch without text samples)."""
    count = jnp.asarray(count, jnp.float32)
    # Counts can be fractional (weighted examples), so guard the denominator, don't clamp it to 1.
    return jnp.where(count > 0, loss_sum / jnp.where(count > 0, count, 1.0), 0.0)
