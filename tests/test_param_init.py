"""Parameter initialisation: ``layers.next_key`` draws exactly nnx's stream keys, and building a
model under tracing no longer asks tracers for their sharding (which made abstract models and
jitted initialisers cost O(parameters^2) in jax's error-message search)."""

import jax
import numpy as np
from flax import nnx
from jax._src.interpreters import partial_eval as pe   # test-only: counts jax's origin searches

from janusflow.configs import presets
from janusflow.models.build import abstract_model
from janusflow.models.layers import next_key


def test_next_key_draws_the_streams_own_keys_and_counts():
    ours, theirs = nnx.Rngs(7), nnx.Rngs(7)
    for _ in range(5):
        a, b = next_key(ours.params), theirs.params()
        np.testing.assert_array_equal(jax.random.key_data(a), jax.random.key_data(b))
    assert int(ours.params.count[...]) == int(theirs.params.count[...]) == 5


def test_next_key_under_jit_equals_the_stream_call():
    def draw(use_ours):
        rngs = nnx.Rngs(3)
        keys = [next_key(rngs.params) if use_ours else rngs.params() for _ in range(4)]
        return jax.random.key_data(jax.numpy.stack(keys)), rngs.params.count[...]
    (k1, c1), (k2, c2) = jax.jit(lambda: draw(True))(), jax.jit(lambda: draw(False))()
    np.testing.assert_array_equal(k1, k2)
    assert int(c1) == int(c2) == 4


def test_building_an_abstract_model_searches_no_tracer_origins(monkeypatch):
    calls = []
    original = pe.DynamicJaxprTracer._origin_msg

    def counted(self):
        calls.append(1)
        return original(self)
    monkeypatch.setattr(pe.DynamicJaxprTracer, "_origin_msg", counted)
    for cfg in (presets.tiny(), presets.tiny_janus_pro()):
        model = abstract_model(cfg)
        assert len(jax.tree.leaves(nnx.state(model, nnx.Param))) > 50
    assert not calls, f"{len(calls)} tracer-origin searches while building (each walks the whole trace)"
