"""The one place a model is built from its config: concrete (random init from ``seed``, an int
or a key) or abstract (``nnx.eval_shape``: shapes and shardings only, nothing initialised or
allocated, so the 1.3B model costs no memory). Training, sampling, import/export, planning and
the benchmarks all build through here, so a new model family is added in one place."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from janusflow.configs.schema import ModelConfig, VAEConfig
from janusflow.models.janus_pro import JanusPro
from janusflow.models.janusflow import JanusFlow
from janusflow.models.vae import make_vae


# The model classes by name: a generation head's record (configs/variants.py) names the one
# that builds it.
MODELS = {cls.__name__: cls for cls in (JanusFlow, JanusPro)}


def model_class(cfg: ModelConfig):
    """The class that builds ``cfg``'s model (its generation head's ``model``)."""
    return MODELS[cfg.head.model]


def build_model(cfg: ModelConfig, *, seed=0, abstract: bool = False):
    model = model_class(cfg)

    def make():
        return cast_params(model(cfg, rngs=nnx.Rngs(seed)), cfg.param_dtype)
    return nnx.eval_shape(make) if abstract else make()


def cast_params(model, param_dtype: str):
    """Every parameter of ``model`` stored in ``param_dtype`` (``model.param_dtype``). Drawn in
    float32 and then cast, so a bfloat16 model is the float32 one of the same seed, rounded."""
    if param_dtype != "float32":
        dt = jnp.dtype(param_dtype)
        for _, var in nnx.iter_graph(model):
            if isinstance(var, nnx.Param) and jnp.issubdtype(var.value.dtype, jnp.floating):
                var.set_value(var.get_value().astype(dt))
    return model


def abstract_model(cfg: ModelConfig):
    """The model with abstract parameters (shapes only; nothing initialised or allocated)."""
    return build_model(cfg, abstract=True)


def build_vae(cfg: VAEConfig, *, seed=0, dtype=None, abstract: bool = False):
    """The VAE (``AutoencoderKL`` or the pixel VAE) computing in ``dtype`` (None: float32)."""
    def make():
        return make_vae(cfg, rngs=nnx.Rngs(seed), dtype=dtype)
    return nnx.eval_shape(make) if abstract else make()
