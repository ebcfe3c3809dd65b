"""The one place a model is built from its config: concrete (random init from ``seed``, an int
or a key) or abstract (``nnx.eval_shape``: shapes and shardings only, nothing initialised or
allocated, so the 1.3B model costs no memory). Training, sampling, import/export, planning and
the benchmarks all build through here, so a new model family is added in one place."""

from __future__ import annotations

from flax import nnx

from janusflow.configs.schema import ModelConfig, VAEConfig
from janusflow.models.janus_pro import JanusPro
from janusflow.models.janusflow import JanusFlow
from janusflow.models.vae import make_vae


# ModelConfig.family -> the composed model (the one place a family is decided)
FAMILY_MODELS = {"janusflow": JanusFlow, "janus_pro": JanusPro}


def build_model(cfg: ModelConfig, *, seed=0, abstract: bool = False):
    family = FAMILY_MODELS[cfg.family]

    def make():
        return family(cfg, rngs=nnx.Rngs(seed))
    return nnx.eval_shape(make) if abstract else make()


def abstract_model(cfg: ModelConfig):
    """The model with abstract parameters (shapes only; nothing initialised or allocated)."""
    return build_model(cfg, abstract=True)


def build_vae(cfg: VAEConfig, *, seed=0, dtype=None, abstract: bool = False):
    """The VAE (``AutoencoderKL`` or the pixel VAE) computing in ``dtype`` (None: float32)."""
    def make():
        return make_vae(cfg, rngs=nnx.Rngs(seed), dtype=dtype)
    return nnx.eval_shape(make) if abstract else make()
