"""Activation checkpointing (remat) policies, selected by name (``ModelConfig.remat``).

The blocks tag their large intermediates with ``jax.ad_checkpoint.checkpoint_name`` (the
names in :data:`TAGS`); a policy says which tagged values the backward pass may keep instead of
recomputing, as MaxText's ``remat_policy`` does. Everything not saved is recomputed from the
block's input, so a policy trades memory (saved activations per layer) against FLOPs (the
recomputed part of the forward pass).

Names (:data:`janusflow.configs.schema.REMAT_POLICIES`):
  none                  no remat: the backward pass keeps every intermediate
  full (alias block)    keep only each block's input; recompute the whole block
  dots                  keep every matmul output without batch dims (JAX's policy)
  save_qkv_proj         keep the q/k/v projections; recompute attention and the MLP
  save_out_proj         keep the attention output projection
  save_dot_except_mlp   keep q/k/v and the attention output projection; recompute the MLP
  save_dot_except_mlp_down
                        also keep the MLP's gate and up projections: only the attention core
                        (and the elementwise ops) are recomputed. Keeping their product
                        (mlp_hidden) alone would not do: its backward needs gate and up.
"""

from __future__ import annotations

import jax
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from janusflow.configs.schema import REMAT_POLICIES

QUERY, KEY, VALUE, OUT = "query_proj", "key_proj", "value_proj", "out_proj"
MLP_GATE, MLP_UP, MLP_HIDDEN, MLP_OUT = "mlp_gate", "mlp_up", "mlp_hidden", "mlp_out"
TAGS = (QUERY, KEY, VALUE, OUT, MLP_GATE, MLP_UP, MLP_HIDDEN, MLP_OUT)

_cp = jax.checkpoint_policies
_SAVED_NAMES = {
    "save_qkv_proj": (QUERY, KEY, VALUE),
    "save_out_proj": (OUT,),
    "save_dot_except_mlp": (QUERY, KEY, VALUE, OUT),
    "save_dot_except_mlp_down": (QUERY, KEY, VALUE, OUT, MLP_GATE, MLP_UP),
}


def tag(x, name: str):
    """``x`` named ``name`` for the remat policies (an identity outside jax.checkpoint)."""
    return checkpoint_name(x, name)


def policy(name: str):
    """The ``jax.checkpoint`` policy of a remat name (None: save nothing, i.e. full remat).
    Raises ValueError for "none" (no checkpointing at all) and for unknown names."""
    if name not in REMAT_POLICIES or name == "none":
        raise ValueError(f"remat policy {name!r}: expected one of "
                         f"{', '.join(n for n in REMAT_POLICIES if n != 'none')}")
    if name in ("full", "block"):
        return None
    if name == "dots":
        return _cp.dots_with_no_batch_dims_saveable
    return _cp.save_only_these_names(*_SAVED_NAMES[name])


def checkpointed(fn, name: str, *, prevent_cse: bool = True):
    """``fn`` under ``jax.checkpoint`` with the named policy; ``fn`` itself for "none".
    ``prevent_cse=False`` inside ``lax.scan`` (the loop already keeps XLA from merging the
    recomputation into the forward pass)."""
    if name == "none":
        return fn
    return jax.checkpoint(fn, policy=policy(name), prevent_cse=prevent_cse)


def call_block(name: str):
    """``f(block, *args) = block(*args)``, under ``nnx.remat`` with the named policy unless
    ``name`` is "none": how the unrolled layer loops call each block."""
    call = lambda m, *a: m(*a)                                          # noqa: E731
    return call if name == "none" else nnx.remat(call, policy=policy(name))
