"""Logical axis names -> mesh axes, and the shardings of parameter trees and batches.

One table for the transformer parts (LLM, REPA projector, aligners) and one for the vision
parts (SigLIP, gen codec, VAE): convolutions with a few hundred channels gain little from
tensor parallelism, so vision weights are only FSDP-sharded.
"""

from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# logical name -> mesh axis (or tuple of mesh axes, or None = replicated)
RULES = {
    "vocab": "tensor",
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "vit_embed": "fsdp",
    "vit_mlp": "tensor",
    "vit_heads": "tensor",
    "conv_in": None,
    "conv_out": "fsdp",
    "norm": None,
    None: None,
}

BATCH_AXES = ("data", "fsdp")


def spec_for(axes, shape, mesh: Mesh, rules=RULES) -> P:
    """PartitionSpec for one parameter. A dimension whose size the mesh axis does not divide is
    replicated instead (small tensors of tiny configs), and no mesh axis is used twice."""
    used, out = set(), []
    for name, dim in zip(axes, shape):
        if name not in rules:
            raise KeyError(f"logical axis {name!r} has no sharding rule; add it to RULES")
        mesh_axis = rules[name]
        if mesh_axis is None or mesh_axis in used or dim % mesh.shape[mesh_axis]:
            out.append(None)
            continue
        used.add(mesh_axis)
        out.append(mesh_axis)
    return P(*out)


def param_shardings(abstract_state: nnx.State, mesh: Mesh, rules=RULES):
    """A pure-dict tree of NamedSharding matching ``nnx.to_pure_dict(abstract_state)``."""
    def one(v):
        axes = v.get_metadata().get("axes") or (None,) * len(v.get_value().shape)
        return NamedSharding(mesh, spec_for(axes, v.get_value().shape, mesh, rules))
    shardings = jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.to_pure_dict(shardings)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading (batch) dimension over data and fsdp, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())
