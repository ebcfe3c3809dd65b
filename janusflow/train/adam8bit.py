"""AdamW with 8-bit optimizer state (``train.optim.name=adamw8bit``): both moments stored
block-wise quantized (``train/blockwise_quant.py``: uint8 codes + one float32 scale per block
of at most 2048 values), dequantized, updated in float32 and quantized again at every step.
State per parameter: 2 bytes + 8 bytes per block, against AdamW's 8 bytes (fp32 moments): ~4x
smaller. Tensors of fewer than ``min_size`` values (norms, biases) keep fp32 moments, as the
paper's 8-bit optimizers do: they cost nothing and are the most sensitive.

The state is laid out as the parameters are (one tree of codes or fp32 moments shaped as the
parameters, one tree of scales per moment), so ``optax.tree_map_params`` shards the codes as
their parameters (``train/state.py``) and the small scales are replicated.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from janusflow.train.blockwise_quant import BLOCK, SIGNED, UNSIGNED, Quantized, dequantize, quantize
from janusflow.train.chunked import by_chunks

MIN_SIZE = 4096


class ScaleByAdam8bitState(NamedTuple):
    count: jax.Array
    mu: dict          # uint8 codes (or fp32 moments of small tensors), shaped as the parameters
    mu_scale: dict    # per-block scales (an unused (1,) for small tensors)
    nu: dict
    nu_scale: dict


def _quantized(p, min_size) -> bool:
    return p.ndim >= 1 and p.size >= min_size


def _empty_scale():
    # one unused value, not shape (0,): orbax refuses to save zero-size arrays
    return jnp.zeros((1,), jnp.float32)


def _init_moment(p, book, min_size, block):
    if not _quantized(p, min_size):
        return jnp.zeros(p.shape, jnp.float32), _empty_scale()
    q = quantize(jnp.zeros(p.shape, jnp.float32), book, block)
    return q.codes, q.scales


def _read(codes, scales, book, block):
    return codes if codes.dtype == jnp.float32 else dequantize(Quantized(codes, scales), book, block)


def _write(x, codes, book, block):
    if codes.dtype == jnp.float32:
        return x, _empty_scale()
    q = quantize(x, book, block)
    return q.codes, q.scales


def scale_by_adam_8bit(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *,
                       block: int = BLOCK, min_size: int = MIN_SIZE,
                       chunked: bool = True) -> optax.GradientTransformation:
    """Adam's direction m_hat / (sqrt(v_hat) + eps) with 8-bit block-wise moments; float32
    math whatever the gradients' and parameters' dtype. ``chunked``: a big tensor (a scanned
    model's stacked layers [layers, in, out], an embedding) is updated a chunk of its leading
    axis at a time (``train/chunked.py``), so its dequantized and new moments live for one
    chunk, not for the whole tensor; the same numbers, since the blocks run along the last axis."""

    def init(params):
        mu = jax.tree.map(lambda p: _init_moment(p, SIGNED, min_size, block), params)
        nu = jax.tree.map(lambda p: _init_moment(p, UNSIGNED, min_size, block), params)
        split = lambda t, i: jax.tree.map(lambda _, x: x[i], params, t)  # noqa: E731
        return ScaleByAdam8bitState(jnp.zeros((), jnp.int32), split(mu, 0), split(mu, 1),
                                    split(nu, 0), split(nu, 1))

    def update(updates, state, params=None):
        del params
        count = optax.safe_increment(state.count)
        c1 = 1 - b1 ** count.astype(jnp.float32)
        c2 = 1 - b2 ** count.astype(jnp.float32)

        def leaf(g, mc, ms, vc, vs):
            g = g.astype(jnp.float32)
            m = b1 * _read(mc, ms, SIGNED, block) + (1 - b1) * g
            v = b2 * _read(vc, vs, UNSIGNED, block) + (1 - b2) * g * g
            u = (m / c1) / (jnp.sqrt(v / c2) + eps)
            return u, _write(m, mc, SIGNED, block), _write(v, vc, UNSIGNED, block)

        def tensor(g, mc, ms, vc, vs):
            # chunks of whole leading-axis slices: the blocks (last axis) are the same
            return by_chunks(leaf, g, mc, ms, vc, vs) if chunked and mc.dtype == jnp.uint8 else leaf(g, mc, ms, vc, vs)

        out = jax.tree.map(tensor, updates, state.mu, state.mu_scale, state.nu, state.nu_scale)
        pick = lambda f: jax.tree.map(lambda _, o: f(o), updates, out)  # noqa: E731
        return pick(lambda o: o[0]), ScaleByAdam8bitState(
            count, pick(lambda o: o[1][0]), pick(lambda o: o[1][1]), pick(lambda o: o[2][0]), pick(lambda o: o[2][1]))

    return optax.GradientTransformation(init, update)


def adamw_8bit(learning_rate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
               weight_decay: float = 0.0, *, block: int = BLOCK, min_size: int = MIN_SIZE, chunked: bool = True):
    """``optax.adamw`` with 8-bit moments (decoupled weight decay, then the learning rate)."""
    return optax.chain(scale_by_adam_8bit(b1, b2, eps, block=block, min_size=min_size, chunked=chunked),
                       optax.add_decayed_weights(weight_decay),
                       optax.scale_by_learning_rate(learning_rate))


def state_bytes(state) -> int:
    """Bytes held by an optimizer state (tests and plans compare them)."""
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
