"""Training with bfloat16 parameters (``model.param_dtype=bfloat16``): the optimizer computes in
float32 and the float32 result is rounded to bfloat16 stochastically.

Why stochastic: bfloat16 keeps 8 significant bits, so a weight of 0.02 moves in steps of
~1.2e-4; a fine-tuning update of ~2e-5 (Adam at lr 2e-5) rounded to nearest is lost every
time and the weights never move. Rounded up with probability (distance to the lower
neighbour / spacing), the expected stored value is the exact float32 result, so small updates
accumulate on average, without a float32 master copy (which would cost 4 bytes per parameter,
more than the bfloat16 weights themselves). The same holds for the EMA's (1 - decay) steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from janusflow.train.chunked import by_chunks


def fp32_math(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """``inner`` fed float32 gradients and parameters (its state is then float32, or whatever
    it chooses, e.g. 8-bit): a no-op for float32 parameters."""
    up = lambda t: jax.tree.map(lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, t)  # noqa: E731

    def init(params):
        return inner.init(up(params))

    def update(updates, state, params=None):
        return inner.update(up(updates), state, None if params is None else up(params))

    return optax.GradientTransformation(init, update)


def stochastic_round(x: jax.Array, key: jax.Array, dtype) -> jax.Array:
    """float32 ``x`` to ``dtype`` (bfloat16) rounded up or down at random, unbiased: random bits
    are added below bfloat16's 16 kept bits of the float32 pattern, which are then cut off.
    Other dtypes: a plain cast."""
    if jnp.dtype(dtype) != jnp.bfloat16:
        return x.astype(dtype)
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    noise = jax.random.bits(key, x.shape, jnp.uint32) & jnp.uint32(0xFFFF)
    rounded = (bits + noise) & jnp.uint32(0xFFFF0000)
    out = jax.lax.bitcast_convert_type(rounded, jnp.float32)
    # inf / nan keep their value (the carry could turn a nan's payload into inf)
    return jnp.where(jnp.isfinite(x), out, x).astype(dtype)


def round_tree(fn, like: dict, *others: dict, key: jax.Array) -> dict:
    """Every leaf of ``fn(leaf of like, leaves of others)`` (float32) in the dtype of ``like``'s
    leaf, stochastically rounded, each leaf with its own key. A big bfloat16 leaf is computed
    and rounded a chunk of its leading axis at a time (``train/chunked.py``; chunk i rounds
    with ``fold_in(leaf key, i)``), so its float32 sum and random bits exist for one chunk."""
    leaves, treedef = jax.tree.flatten(like)
    keys = jax.random.split(key, max(len(leaves), 1))
    rest = [treedef.flatten_up_to(t) for t in others]

    def leaf(x, k, *xs):
        if jnp.dtype(x.dtype) != jnp.bfloat16:      # a plain cast: XLA fuses it, nothing to bound
            return stochastic_round(fn(x, *xs), k, x.dtype)
        return by_chunks(lambda *a: stochastic_round(fn(*a[:-1]), a[-1], x.dtype), x, *xs, key=k)
    return jax.tree.unflatten(treedef, [leaf(x, k, *xs) for x, k, *xs in zip(leaves, keys, *rest)])


def apply_updates(params: dict, updates: dict, key: jax.Array) -> dict:
    """``optax.apply_updates`` summing in float32, rounded stochastically into bfloat16 leaves."""
    return round_tree(lambda p, u: p.astype(jnp.float32) + u, params, updates, key=key)


def ema_update(ema: dict, params: dict, decay: float, key: jax.Array) -> dict:
    """decay * ema + (1 - decay) * params in float32, stochastically rounded into ema's dtypes."""
    return round_tree(lambda e, p: decay * e.astype(jnp.float32) + (1 - decay) * p.astype(jnp.float32),
                      ema, params, key=key)
