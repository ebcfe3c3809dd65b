"""REPA representation-alignment loss (REPA paper, arXiv 2410.06940; JanusFlow section 3).

    L_REPA = -mean over patches n of cos(stopgrad(y_n), h_phi(q(z_t))_n)

``pred`` is h_phi's output (the projector applied to the LLM hidden states after block
``repa_layer`` at the image positions); ``target`` is the understanding encoder's patch
features of the clean image. The stop-gradient sits in here so the encoder gets exactly zero
gradient from this loss even if the caller passes a live target. The weight lambda (1 in
JanusFlow, 0.5 in REPA) is applied by the caller: this returns the unweighted loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Same role as F.normalize's eps: vectors with norm below it are divided by eps instead.
NORM_EPS = 1e-6


def l2_normalize(x, eps: float = NORM_EPS):
    """x / max(||x||, eps) along the last axis, fp32.

    The max is taken on the squared norm so the gradient stays finite at x = 0 (d sqrt at 0
    would be inf and 0 * inf = NaN).
    """
    x = x.astype(jnp.float32)
    sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def repa_per_example(pred, target, eps: float = NORM_EPS):
    """Per-example REPA loss (B,): -mean over N of cos(stopgrad(target), pred); in [-1, 1]."""
    if pred.ndim != 3:
        raise ValueError(f"pred must be (batch, patches, channels), got shape {pred.shape}")
    if target.shape != pred.shape:
        raise ValueError(f"target shape {target.shape} != pred shape {pred.shape} "
                         "(projector output must match the encoder's patch grid and width)")
    target = jax.lax.stop_gradient(target)
    cos = jnp.sum(l2_normalize(pred, eps) * l2_normalize(target, eps), axis=-1)
    return -jnp.mean(cos, axis=-1)


def repa_loss(pred, target, mask=None, eps: float = NORM_EPS):
    """(loss_sum, count): REPA loss summed over examples, and the number of examples counted.

    ``mask`` (B,) is an optional per-example validity (bool) or weight (float) — rows that are
    not generation samples get 0. The sum is of mask * per-example loss and the count is
    sum(mask), so ``loss_sum / count`` is the (weighted) mean over the global batch.
    """
    per = repa_per_example(pred, target, eps)
    if mask is None:
        return jnp.sum(per), jnp.asarray(per.shape[0], jnp.float32)
    if mask.shape != per.shape:
        raise ValueError(f"mask must have shape {per.shape} (one value per example), "
                         f"got {mask.shape}")
    w = mask.astype(jnp.float32)
    # where, not plain multiply: a zero-weight row holding NaN must still contribute nothing.
    return jnp.sum(jnp.where(w != 0, w * per, 0.0)), jnp.sum(w)
