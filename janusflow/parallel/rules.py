"""Logical axis names -> mesh axes: the shardings of parameter trees, batches and activations.

Parameters: one table for the transformer parts (LLM, REPA projector, aligners) and the vision
parts (SigLIP, gen codec, VAE); convolutions with a few hundred channels gain little from
tensor parallelism, so vision weights are only FSDP-sharded.

Activations (``ACTIVATION_RULES``, MaxText's logical-constraint pattern): the models call
:func:`constrain` on the residual stream, attention and MLP intermediates, so the batch stays
split over ('data', 'fsdp') and the compiler gathers the FSDP-sharded *weights* instead of the
activations. Left to itself, XLA's sharding propagation follows the weights' 'embed' -> 'fsdp'
sharding into the activations and all-gathers the global batch on every device.
:func:`constrain` is a no-op outside :func:`activation_sharding` (the train step enters it), so
the same models run unsharded on one device, in tests and in the sampler.

Both tables can be overridden from an experiment config (``TrainConfig.param_rules`` /
``TrainConfig.activation_rules``, checked by :func:`check_overrides`).
"""

from __future__ import annotations

import contextlib
import contextvars

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from janusflow.configs.errors import ConfigError

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
    "layers": None,         # the stacking axis of scanned layers: each device holds every layer
    None: None,
}

BATCH_AXES = ("data", "fsdp")
MESH_AXES = ("data", "fsdp", "tensor")

# Activation logical axes (a separate namespace from the parameter axes above).
ACTIVATION_RULES = {
    "batch": BATCH_AXES,
    "length": None,
    "embed": None,          # the residual stream stays whole per row (Megatron-style TP)
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "vocab": "tensor",
    # vision towers: SigLIP tokens, gen-codec / VAE feature maps (NHWC)
    "vit_length": None,
    "vit_embed": None,
    "vit_mlp": "tensor",
    "vit_heads": "tensor",
    "height": None,
    "width": None,
    "channels": None,
    None: None,
}


# NHWC feature maps of the gen codec and the VAE
IMAGE_FEATURES = ("batch", "height", "width", "channels")


def check_overrides(overrides, table: dict, field: str) -> dict:
    """``table`` with ``overrides`` ((logical axis, mesh axis | tuple of mesh axes | None), ...)
    applied. Raises ConfigError naming an unknown logical or mesh axis."""
    out = dict(table)
    for item in overrides:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise ConfigError(f"{field}: expected (logical axis, mesh axis) pairs, got {item!r}")
        name, target = item
        if name not in table or name is None:
            raise ConfigError(f"{field}: unknown logical axis {name!r}; known: "
                              f"{', '.join(sorted(k for k in table if k is not None))}")
        axes = target if isinstance(target, (tuple, list)) else (target,)
        for a in axes:
            if a is not None and a not in MESH_AXES:
                raise ConfigError(f"{field}: {name!r} -> unknown mesh axis {a!r}; mesh axes are "
                                  f"{', '.join(MESH_AXES)} (or None: replicated)")
        out[name] = tuple(target) if isinstance(target, list) else target
    return out


def spec_for(axes, shape, mesh: Mesh, rules=RULES) -> P:
    """PartitionSpec for one parameter. A dimension whose size the mesh axis does not divide is
    replicated instead (small tensors of tiny configs), and no mesh axis is used twice."""
    used, out = set(), []
    for name, dim in zip(axes, shape):
        if name not in rules:
            raise KeyError(f"logical axis {name!r} has no sharding rule; add it to the rules table")
        mesh_axes = rules[name]
        group = mesh_axes if isinstance(mesh_axes, tuple) else (mesh_axes,)
        group = tuple(a for a in group if a is not None and a not in used)
        size = 1
        for a in group:
            size *= mesh.shape[a]
        if not group or dim % size:
            out.append(None)
            continue
        used.update(group)
        out.append(group if isinstance(mesh_axes, tuple) else group[0])
    return P(*out)


def param_shardings(abstract_state: nnx.State, mesh: Mesh, rules=RULES):
    """A pure-dict tree of NamedSharding matching ``nnx.to_pure_dict(abstract_state)``."""
    def one(v):
        value = v.get_value()
        if not hasattr(value, "ndim"):
            # a tuple of arrays (packed weights, layers.PackedWeight): each whole on every device
            return jax.tree.map(lambda _: NamedSharding(mesh, P()), value)
        axes = v.get_metadata().get("axes") or (None,) * value.ndim
        return NamedSharding(mesh, spec_for(axes, value.shape, mesh, rules))
    shardings = jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.to_pure_dict(shardings)


def experiment_rules(cfg) -> tuple[dict, dict]:
    """(parameter rules, activation rules) of an ExperimentConfig, its overrides applied."""
    t = cfg.train
    return (check_overrides(t.param_rules, RULES, "TrainConfig.param_rules"),
            check_overrides(t.activation_rules, ACTIVATION_RULES, "TrainConfig.activation_rules"))


# (mesh, activation rules) while the train step is traced; None elsewhere.
_ACTIVATION_CONTEXT = contextvars.ContextVar("janusflow_activation_sharding", default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules=ACTIVATION_RULES):
    """Within this context (while tracing), :func:`constrain` pins activations to ``mesh``."""
    token = _ACTIVATION_CONTEXT.set((mesh, rules))
    try:
        yield
    finally:
        _ACTIVATION_CONTEXT.reset(token)


def activation_context():
    """(mesh, activation rules) of the current :func:`activation_sharding`, or None outside it
    (kernels that run per shard, e.g. splash attention, read the mesh from here)."""
    return _ACTIVATION_CONTEXT.get()


def constrain(x, axes):
    """``x`` with its sharding pinned to the logical ``axes`` (one name per dimension) under
    the current :func:`activation_sharding`; ``x`` unchanged outside it."""
    ctx = activation_context()
    if ctx is None:
        return x
    if len(axes) != x.ndim:
        raise ValueError(f"constrain: {len(axes)} axes {axes} for an array of shape {x.shape}")
    mesh, rules = ctx
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec_for(axes, x.shape, mesh, rules)))


def constrain_like(tree, shardings):
    """Pin every leaf of ``tree`` to the matching NamedSharding (gradients and the gradient
    accumulator to the parameters' shardings); ``tree`` unchanged when ``shardings`` is None."""
    if shardings is None:
        return tree
    return jax.lax.with_sharding_constraint(tree, shardings)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading (batch) dimension over data and fsdp, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())
