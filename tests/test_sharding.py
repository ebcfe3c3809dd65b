"""Activation sharding (parallel/rules.py): constrain() is a no-op outside a mesh context, the
rules are overridable from the config and validated, and in the compiled train step on an
FSDP mesh no all-gather carries the global batch (the SPMD partitioner gathers the weights,
not the activations)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from janusflow.configs.schema import ConfigError, TrainConfig
from janusflow.configs.io import from_dict, to_dict
from janusflow.configs.loader import apply_overrides, load_config
from janusflow.parallel.rules import (ACTIVATION_RULES, activation_sharding, constrain,
                                      experiment_rules, spec_for)

B = 24        # global rows per task: no model dimension is 24, so a leading 24 is the batch


def _mesh():
    return Mesh(np.asarray(jax.devices()[:8]).reshape(1, 8, 1), ("data", "fsdp", "tensor"))


def test_constrain_is_a_noop_without_a_mesh_and_pins_with_one():
    x = jnp.ones((16, 4, 8))
    assert constrain(x, ("batch", "length", "embed")) is x
    mesh = _mesh()

    @jax.jit
    def f(x):
        with activation_sharding(mesh):
            return constrain(x * 2, ("batch", "length", "embed"))
    y = f(jax.device_put(x, NamedSharding(mesh, P())))
    assert y.sharding.is_equivalent_to(NamedSharding(mesh, P(("data", "fsdp"), None, None)), 3)
    assert not y.sharding.is_fully_replicated
    with pytest.raises(ValueError, match="3 axes"):
        with activation_sharding(mesh):
            constrain(jnp.ones((2, 2)), ("batch", "length", "embed"))


def test_rule_overrides_are_validated_and_applied():
    with pytest.raises(ConfigError, match="activation_rules.*unknown logical axis 'lenght'"):
        TrainConfig(activation_rules=(("lenght", "fsdp"),))
    with pytest.raises(ConfigError, match="param_rules.*unknown mesh axis 'model'"):
        TrainConfig(param_rules=(("embed", "model"),))
    with pytest.raises(ConfigError, match="pairs"):
        TrainConfig(activation_rules=("length",))
    cfg = apply_overrides(load_config("tiny"), ['train.activation_rules=(("length", "tensor"), ("batch", "data"))',
                                                'train.param_rules=(("embed", None),)'])
    params, acts = experiment_rules(cfg)
    assert acts["length"] == "tensor" and acts["batch"] == "data" and params["embed"] is None
    assert acts["mlp"] == ACTIVATION_RULES["mlp"]
    # a saved config with overrides (incl. a group of mesh axes) reads back equal
    t = TrainConfig(activation_rules=(("batch", ("data", "fsdp")), ("length", None)))
    assert from_dict(TrainConfig, to_dict(t)) == t
    mesh = _mesh()
    assert spec_for(("batch", "length"), (16, 5), mesh, ACTIVATION_RULES) == P(("data", "fsdp"), None)
    assert spec_for(("batch", "length"), (12, 5), mesh, ACTIVATION_RULES) == P(None, None)  # 12 % 8


def _global_batch_gathers(cfg):
    from janusflow.perf.plan import PLAN_COMPILER_OPTIONS, lower_train_step
    lowered, *_ = lower_train_step(cfg)
    text = lowered.compile(compiler_options=PLAN_COMPILER_OPTIONS).as_text()
    gathers = [l for l in text.splitlines() if re.search(r"= \S+ all-gather(-start)?\(", l)]
    assert gathers, "no all-gather at all: the FSDP weights must be gathered"
    # Floating-point results only: the embedding lookup gathers the int32 token ids (4 bytes a
    # token) by design, far cheaper than gathering the FSDP-sharded vocab x hidden table.
    return [l.strip() for l in gathers if re.search(r"= \(?(f|bf)\d+\[%d," % B, l)]


def _step_cfg(base, *extra):
    return apply_overrides(load_config(base), [
        "model.llm.num_layers=2", "model.repa_layer=1", "model.siglip.num_layers=1",
        "model.remat=block", "model.dtype=bfloat16",
        f"train.und_batch={B}", f"train.gen_batch={B}", f"train.text_batch={B}",
        "train.mesh.data=1", "train.mesh.fsdp=8", *extra])


@pytest.mark.parametrize("scan", ["false", "true"])
def test_no_all_gather_of_the_global_batch_tiny(scan):
    """Tiny widths (fast); unrolled and scanned layers (their weights are gathered per layer
    inside the scan, the activations stay split over the batch)."""
    bad = _global_batch_gathers(_step_cfg("tiny", f"model.scan_layers={scan}"))
    assert not bad, f"{len(bad)} all-gathers of the global batch, e.g. {bad[:3]}"


@pytest.mark.slow
def test_no_all_gather_of_the_global_batch_full_width():
    """JanusFlow-1.3B widths, 2 LLM layers, 1 SigLIP layer, precomputed latents (the issue's
    test; about a minute of compile on a quiet 2-core machine). Old code: 68 all-gathers whose
    result has the global batch of 24, e.g. f32[24,641,5632] (MLP) and f32[24,128,102400] (logits)."""
    bad = _global_batch_gathers(_step_cfg("experiments/janusflow_1_3b.py:stage=2", "data.gen.latents=true"))
    assert not bad, f"{len(bad)} all-gathers of the global batch, e.g. {bad[:3]}"
