"""Rectified flow in JanusFlow's time convention: t = 0 is noise, t = 1 is data.

    z_t = t * x + (1 - t) * z0,   z0 ~ N(0, I)
    dz/dt = v = x - z0            (the regression target)

Sampling integrates dz/dt = v(z, t) forward from t = 0 (noise) to t = 1 (data).
REPA, SD3 and minRF use the opposite direction (noise at t = 1); do not mix formulas.

Times here are in [0, 1]. The network's time embedding sees ``model_time(t) = t * TIME_SCALE``;
``JanusFlow.gen_inputs`` already applies that scaling, so pass it plain t.
All math is fp32 regardless of the input dtype.
"""

from __future__ import annotations

import operator
from typing import Callable

import jax
import jax.numpy as jnp

from janusflow.models.janusflow import TIME_SCALE

# Smallest/largest fp32 values strictly inside (0, 1) that we allow: keeps logit(t) finite.
_T_MIN = 2.0 ** -24
_T_MAX = 1.0 - 2.0 ** -24

TIME_SAMPLERS = ("uniform", "logit_normal")


def sample_t(key, batch: int, kind: str = "logit_normal", mean: float = 0.0, std: float = 1.0):
    """Training times t (batch,) fp32 in the open interval (0, 1).

    ``uniform``: t ~ U(0, 1). ``logit_normal`` (SD3): t = sigmoid(mean + std * N(0, 1)).
    Because t = 1 is data here, a positive ``mean`` shifts samples towards the clean end.
    """
    if kind == "uniform":
        t = jax.random.uniform(key, (batch,), jnp.float32)
    elif kind == "logit_normal":
        t = jax.nn.sigmoid(mean + std * jax.random.normal(key, (batch,), jnp.float32))
    else:
        raise ValueError(f"unknown time sampler {kind!r}; expected one of {TIME_SAMPLERS}")
    return jnp.clip(t, _T_MIN, _T_MAX)


def _check_t(t, x):
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"t must have shape (batch,) = ({x.shape[0]},), got {t.shape}")


def _bcast(t, x):
    return t.astype(jnp.float32).reshape((-1,) + (1,) * (x.ndim - 1))


def interpolate(x, z0, t):
    """z_t = t * x + (1 - t) * z0 (fp32); x data, z0 noise, t (B,) broadcast over the rest.
    t = 0 gives z0 (noise), t = 1 gives x (data)."""
    if x.shape != z0.shape:
        raise ValueError(f"data shape {x.shape} != noise shape {z0.shape}")
    _check_t(t, x)
    tb = _bcast(t, x)
    return tb * x.astype(jnp.float32) + (1.0 - tb) * z0.astype(jnp.float32)


def target_velocity(x, z0):
    """d z_t / dt = x - z0 (fp32): points from noise to data."""
    if x.shape != z0.shape:
        raise ValueError(f"data shape {x.shape} != noise shape {z0.shape}")
    return x.astype(jnp.float32) - z0.astype(jnp.float32)


def rf_loss(v_pred, x, z0, weight=None):
    """Per-example MSE (B,) between ``v_pred`` and ``x - z0``, mean over all non-batch dims,
    times the optional per-example ``weight`` (B,)."""
    if v_pred.shape != x.shape:
        raise ValueError(f"velocity shape {v_pred.shape} != data shape {x.shape}")
    if x.ndim < 2:
        raise ValueError(f"expected (batch, ...) arrays with rank >= 2, got shape {x.shape}")
    err = v_pred.astype(jnp.float32) - target_velocity(x, z0)
    mse = jnp.mean(jnp.square(err), axis=tuple(range(1, err.ndim)))
    if weight is not None:
        if weight.shape != mse.shape:
            raise ValueError(f"weight must have shape {mse.shape}, got {weight.shape}")
        mse = mse * weight.astype(jnp.float32)
    return mse


def rf_loss_terms(v_pred, x, z0, mask=None, weight=None):
    """(loss_sum, count) over the batch for a global mean: sum of (weighted) per-example MSE
    over valid rows, and the number of valid rows. ``mask`` (B,) marks valid examples (rows of
    a packed/mixed batch that are not generation samples); ``weight`` (B,) scales the loss
    without changing the count."""
    per = rf_loss(v_pred, x, z0, weight)
    if mask is None:
        return jnp.sum(per), jnp.asarray(per.shape[0], jnp.float32)
    if mask.shape != per.shape:
        raise ValueError(f"mask must have shape {per.shape}, got {mask.shape}")
    mask = mask.astype(bool)
    # where, not multiply: invalid rows may hold garbage (inf/NaN) that must not leak.
    return jnp.sum(jnp.where(mask, per, 0.0)), jnp.sum(mask, dtype=jnp.float32)


def model_time(t):
    """The value the time embedding sees: t * TIME_SCALE (fp32)."""
    return jnp.asarray(t, jnp.float32) * TIME_SCALE


def time_grid(num_steps: int):
    """Sampling grid of the official demo: (t_k = k / num_steps for k = 0..num_steps-1, dt).

    Starts at noise (t = 0); after the last step z sits at t = 1 (data).
    """
    try:
        num_steps = operator.index(num_steps)
    except TypeError:
        raise ValueError(f"num_steps must be an int, got {num_steps!r}") from None
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return jnp.arange(num_steps, dtype=jnp.float32) / num_steps, 1.0 / num_steps


def euler_step(z, v, t, dt):
    """One forward Euler step towards data: (z + dt * v, t + dt), fp32."""
    if v.shape != z.shape:
        raise ValueError(f"velocity shape {v.shape} != state shape {z.shape}")
    return z.astype(jnp.float32) + dt * v.astype(jnp.float32), jnp.asarray(t, jnp.float32) + dt


def heun_step(z, t, dt, velocity_fn: Callable):
    """One Heun (explicit trapezoid, 2nd order) step: two velocity evaluations,
    ``velocity_fn(z, t)`` and ``velocity_fn(z_euler, t + dt)``. Returns (z_next, t + dt).

    ``t`` is passed to ``velocity_fn`` as given (scalar or (B,)); at the last step of a
    ``time_grid`` the second evaluation is at t = 1, the data end.
    """
    z = z.astype(jnp.float32)
    t = jnp.asarray(t, jnp.float32)
    v1 = velocity_fn(z, t).astype(jnp.float32)
    if v1.shape != z.shape:
        raise ValueError(f"velocity_fn returned shape {v1.shape}, expected {z.shape}")
    t_next = t + dt
    v2 = velocity_fn(z + dt * v1, t_next).astype(jnp.float32)
    return z + (0.5 * dt) * (v1 + v2), t_next
