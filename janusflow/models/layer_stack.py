"""Scanned layers: identical blocks stored as one module with stacked parameters.

:func:`stack_layers` turns a list of freshly built blocks into one block whose every parameter
has a leading ``"layers"`` axis (its ``axes`` metadata gains the logical name ``"layers"``,
which the sharding rules never shard). Stacking the blocks the unrolled model would build keeps
the initialisation identical, so ``scan_layers`` changes the program, not the model.

:func:`scan_layers` runs a range of those layers with ``lax.scan``: XLA compiles the block
once instead of once per layer. Each parameter also records ``stacked_depth`` (the length of
its path inside the block) so the checkpoint code can address layer ``i`` of it by the
unrolled path (``layers.3.mlp.up_proj.kernel``), see ``checkpoint/torch_layout.py``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from janusflow.models.remat import checkpointed

LAYER_AXIS = "layers"


def stack_layers(blocks: Sequence[nnx.Module]) -> nnx.Module:
    """One module with the parameters of ``blocks`` stacked along a new leading axis.
    Reuses ``blocks[0]`` as the container (the others are discarded)."""
    if not blocks:
        raise ValueError("stack_layers needs at least one block")
    states = [dict(nnx.to_flat_state(nnx.state(b, nnx.Param))) for b in blocks]
    for path, var in states[0].items():
        var.set_value(jnp.stack([s[path].get_value() for s in states]))
        axes = var.get_metadata().get("axes") or (None,) * (var.get_value().ndim - 1)
        var.set_metadata(axes=(LAYER_AXIS,) + tuple(axes), stacked_depth=len(path))
    return blocks[0]


def scan_layers(stack: nnx.Module, carry, call: Callable, *, start: int, stop: int, xs=None,
                remat: str = "none"):
    """Run layers ``start .. stop-1`` of ``stack``: ``call(block, carry, x) -> (carry, y)`` per
    layer, ``x`` the layer's row of ``xs`` (a pytree with a leading layer axis, or None).
    Returns ``(carry, ys)`` with ``ys`` stacked over the layers run (None if ``call`` gives None).
    ``remat``: a policy name of ``models/remat.py`` applied to each layer."""
    graphdef, params = nnx.split(stack)

    def body(c, layer):
        p, x = layer
        return call(nnx.merge(graphdef, p), c, x)

    rows = jax.tree.map(lambda a: a[start:stop], (params, xs))
    return jax.lax.scan(checkpointed(body, remat, prevent_cse=False), carry, rows)


def layer_count(layers) -> int:
    """Number of blocks in ``layers``: an ``nnx.List`` of blocks or a stacked block."""
    if isinstance(layers, nnx.List):
        return len(layers)
    return jax.tree.leaves(nnx.state(layers, nnx.Param))[0].shape[0]


def layer(layers, i: int) -> nnx.Module:
    """Block ``i`` of ``layers`` (for a stacked block: a copy holding row ``i`` of each
    parameter, as the unrolled model's block ``i``; writing to it leaves the stack unchanged)."""
    if isinstance(layers, nnx.List):
        return layers[i]
    graphdef, state = nnx.split(layers)
    row = jax.tree.map(lambda a: a[i], state)
    for path, var in nnx.to_flat_state(row):
        meta = var.get_metadata()
        var.set_metadata(axes=tuple(meta["axes"])[1:], stacked_depth=None)
    return nnx.merge(graphdef, row)
