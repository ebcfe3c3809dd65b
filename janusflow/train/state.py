"""Train state: trainable / frozen parameter split per stage, optimizer, EMA, shardings.

The state is a plain pytree of arrays (``TrainState``) so jit, orbax and sharding treat it
uniformly; the NNX graph (module structure) lives in ``Parts`` and is merged back inside the
step. Frozen parameters are a separate subtree: they get no gradient, no optimizer state and
no update, so they are bit-identical after any number of steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from janusflow.configs.schema import ExperimentConfig, OptimConfig
from janusflow.models.janusflow import JanusFlow
from janusflow.models import build as model_build
from janusflow.parallel.rules import experiment_rules, param_shardings, replicated
from janusflow.train.adam8bit import adamw_8bit
from janusflow.train.low_precision import fp32_math
from janusflow.train.lora import LORA_KEY, LORA_STREAM, apply_lora, init_lora

# Paper Table 1. Stage 1 trains what is newly initialised (aligners, gen codec, and the new
# small pieces: beg_of_und_embed, REPA projector, the ablation-C encoder); stage 2 adds the LLM;
# stage 3 adds SigLIP. Janus-Pro's VQ tokenizer (``gen_vision``) is trained on its own
# (``train/vq_pretrain.py``) and stays frozen in every stage, as Janus keeps it.
FROZEN_BY_STAGE = {1: ("language_model", "und_encoder", "gen_vision"), 2: ("und_encoder", "gen_vision"),
                   3: ("gen_vision",)}
# LoRA (train.lora.rank > 0): the LLM trains through its factors only, SigLIP stays as it is
FROZEN_BY_LORA = ("language_model", "und_encoder")


class TrainState(NamedTuple):
    step: jax.Array
    rng: jax.Array               # base key; step k uses fold_in(rng, k) (exact resume)
    params: dict                 # trainable parameters (pure dict)
    frozen: dict                 # frozen parameters of the model (pure dict)
    vae: dict                    # frozen VAE parameters (empty for the pixel VAE)
    opt_state: Any
    ema: Optional[dict]          # EMA of the trainable parameters (None when disabled)


@dataclass
class Parts:
    """Static things the step needs besides the state."""
    graphdef: Any
    vae_graphdef: Any
    optimizer: optax.GradientTransformation
    schedule: Any
    lora_scale: float = 0.0      # train.lora: params[LORA_KEY] holds factors merged at every build


def trainable_filter(stage: int, lora: bool = False):
    frozen = FROZEN_BY_STAGE[stage] + (FROZEN_BY_LORA if lora else ())
    return lambda path, x: isinstance(x, nnx.Param) and path[0] not in frozen


def train_filter(cfg: ExperimentConfig):
    return trainable_filter(cfg.train.stage, cfg.train.lora.rank > 0)


def make_schedule(o: OptimConfig):
    warm = optax.linear_schedule(0.0, o.lr, max(o.warmup_steps, 1))
    if o.schedule == "constant":
        after = optax.constant_schedule(o.lr)
    else:
        after = optax.cosine_decay_schedule(o.lr, o.decay_steps, alpha=o.min_lr_ratio)
    return optax.join_schedules([warm, after], [o.warmup_steps])


def make_optimizer(o: OptimConfig):
    schedule = make_schedule(o)
    chain = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else []
    if o.name == "adafactor":
        # factored second moments, no momentum: the optimizer state of the fine-tuning
        # configs that must fit one accelerator (OptimConfig doc); clipping stays ours
        # multiply_by_parameter_scale off: lr is then a step size as AdamW's is, not relative
        chain.append(optax.adafactor(schedule, clipping_threshold=None, eps=o.eps,
                                     multiply_by_parameter_scale=False,
                                     weight_decay_rate=o.weight_decay or None))
    elif o.name == "adamw8bit":
        # both moments block-wise quantized to 8 bits (train/adam8bit.py): ~4x less state
        chain.append(adamw_8bit(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay))
    else:
        chain.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay))
    # gradients and parameters reach the optimizer in float32 whatever model.param_dtype is
    # (a no-op for float32): clipping's norm, moments and update are float32 math
    return fp32_math(optax.chain(*chain)), schedule


# The VAE's random init draws from its own stream (train.seed folded with this), so it does not
# depend on the model's structure, and a fresh start and a warm start build the same one.
VAE_STREAM = 0x5DA1


def build_model(cfg: ExperimentConfig, seed: int, abstract: bool = False) -> JanusFlow:
    return model_build.build_model(cfg.model, seed=seed, abstract=abstract)


def build_vae(cfg: ExperimentConfig, seed: int, abstract: bool = False):
    """The frozen VAE module, randomly initialised (its weights are replaced when
    ``train.vae_from`` names the pretrained one), computing in ``train.vae_dtype``."""
    key = jax.random.fold_in(jax.random.key(seed), VAE_STREAM)
    dtype = jnp.bfloat16 if cfg.train.vae_dtype == "bfloat16" else None
    return model_build.build_vae(cfg.model.vae, seed=key, dtype=dtype, abstract=abstract)


def vae_params(vae) -> dict:
    """The VAE module's parameters as the pure dict the train state holds."""
    return _pure(nnx.split(vae, nnx.Param)[1])


def random_vae_params(cfg: ExperimentConfig) -> dict:
    """The random VAE a fresh run of ``cfg`` builds (jitted: threefry per parameter shape is
    slow eagerly), without building the model."""
    return jax.jit(lambda: vae_params(build_vae(cfg, cfg.train.seed)))()


def split_model(model, vae, cfg: ExperimentConfig):
    graphdef, trainable, frozen = nnx.split(model, train_filter(cfg), nnx.Param)
    vae_graphdef, vae_params = nnx.split(vae, nnx.Param)
    return graphdef, trainable, frozen, vae_graphdef, vae_params


def _pure(state) -> dict:
    return nnx.to_pure_dict(state)


def _state_from_model(model, vae: dict, cfg: ExperimentConfig, parts_opt, seed=None) -> TrainState:
    """``vae``: the VAE's parameters (pure dict); ``seed``: ``train.seed`` (or a traced copy)."""
    t = cfg.train
    seed = t.seed if seed is None else seed
    _, trainable, frozen = nnx.split(model, train_filter(cfg), nnx.Param)
    params, frozen = _pure(trainable), _pure(frozen)
    if t.lora.rank:
        params[LORA_KEY] = init_lora(frozen, t.lora.rank,
                                     jax.random.fold_in(jax.random.key(seed), LORA_STREAM))
    return TrainState(
        step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(jax.random.key(seed)),
        params=params, frozen=frozen, vae=vae,
        opt_state=parts_opt.init(params),
        ema=jax.tree.map(jnp.copy, params) if t.optim.ema_decay > 0 else None)


def abstract_parts(cfg: ExperimentConfig):
    """(abstract model, abstract vae) built with eval_shape: no memory, no RNG work."""
    return build_model(cfg, 0, abstract=True), build_vae(cfg, 0, abstract=True)


def state_shardings(cfg: ExperimentConfig, mesh: Mesh):
    """(Parts, abstract TrainState, TrainState of NamedSharding)."""
    model, vae = abstract_parts(cfg)
    graphdef, trainable, frozen, vae_graphdef, vae_state = split_model(model, vae, cfg)
    optimizer, schedule = make_optimizer(cfg.train.optim)
    parts = Parts(graphdef, vae_graphdef, optimizer, schedule, cfg.train.lora.scale)
    rules, _ = experiment_rules(cfg)
    p_sh = param_shardings(trainable, mesh, rules)
    abstract = jax.eval_shape(lambda: _state_from_model(build_model(cfg, 0), vae_params(build_vae(cfg, 0)),
                                                        cfg, optimizer))
    rep = replicated(mesh)
    if LORA_KEY in abstract.params:  # the factors are small: replicated
        p_sh = {**p_sh, LORA_KEY: jax.tree.map(lambda _: rep, abstract.params[LORA_KEY])}
    # a moment shaped as its parameter is sharded as it (8-bit codes too); Adafactor's factored
    # rows/columns, the 8-bit block scales (and placeholders) are not, and are small: replicated
    opt_sh = optax.tree_map_params(
        optimizer, lambda x, s, p: s if x.shape == p.shape else rep, abstract.opt_state, p_sh, abstract.params,
        transform_non_params=lambda _: rep,
        is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding))
    shardings = TrainState(
        step=rep, rng=rep, params=p_sh, frozen=param_shardings(frozen, mesh, rules),
        vae=param_shardings(vae_state, mesh, rules), opt_state=opt_sh,
        ema=p_sh if abstract.ema is not None else None)
    return parts, abstract, shardings


def init_state(cfg: ExperimentConfig, mesh: Mesh, vae: Optional[dict] = None):
    """Initialise the train state directly into its shardings (one jitted program, so the
    full model is never materialised on one device). ``vae``: pretrained VAE parameters
    (``load_vae_params``); default a random VAE. Returns (parts, state, shardings)."""
    parts, _, shardings = state_shardings(cfg, mesh)
    init = make_init(cfg, parts, shardings)
    with jax.set_mesh(mesh):
        state = init(place_vae(vae, shardings))
    return parts, state, shardings


def make_init(cfg: ExperimentConfig, parts: Parts, shardings: TrainState):
    """The jitted, sharded initialiser (call it under ``jax.set_mesh(mesh)``): ``init()`` with
    a random VAE, ``init(vae)`` with these VAE parameters (placed by ``place_vae``), whose
    random init is then never computed. ``train.seed`` is an argument of the compiled program,
    not a constant in it: runs that differ only in their seed (a sweep's seeds) share one
    program, so the persistent compilation cache serves the second (the init of a tiny model
    compiles in ~8 s on CPU)."""
    def init(seed, vae):
        if vae is None:
            vae = vae_params(build_vae(cfg, seed))
        # a typed key: nnx.Rngs reads a traced integer as raw key data
        return _state_from_model(build_model(cfg, jax.random.key(seed)), vae, cfg, parts.optimizer, seed)
    jitted = jax.jit(init, out_shardings=shardings)

    def call(vae=None):
        return jitted(jnp.asarray(cfg.train.seed, jnp.uint32), vae)
    call.lower = lambda vae=None: jitted.lower(jnp.asarray(cfg.train.seed, jnp.uint32), vae)
    return call


def place_vae(vae: Optional[dict], shardings: TrainState) -> Optional[dict]:
    return None if vae is None else jax.device_put(vae, shardings.vae)


def state_from_model(model, vae: dict, cfg: ExperimentConfig, mesh: Mesh):
    """Train state from an existing (e.g. imported) model and the VAE's parameters, placed
    into their shardings."""
    parts, _, shardings = state_shardings(cfg, mesh)
    state = _state_from_model(model, vae, cfg, parts.optimizer)
    return parts, jax.device_put(state, shardings), shardings


def merge_model(parts: Parts, params: dict, frozen: dict):
    """The model of a train state; LoRA factors (``params[LORA_KEY]``) merged into their
    frozen kernels (``train/lora.py``)."""
    if LORA_KEY in params:
        params = dict(params)
        frozen = apply_lora(frozen, params.pop(LORA_KEY), parts.lora_scale)
    return nnx.merge(parts.graphdef, params, frozen)


def merge_vae(parts: Parts, vae: dict):
    return nnx.merge(parts.vae_graphdef, vae)
