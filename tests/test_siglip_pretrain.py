"""SigLIP sigmoid-loss pre-training (the default run's first phase) learns a fixed batch."""

import itertools

import jax.numpy as jnp
import numpy as np

from janusflow.configs import presets
from janusflow.configs.schema import ExperimentConfig, TrainConfig
from janusflow.train.siglip_pretrain import pretrain_siglip, sigmoid_loss
from janusflow.train.synthetic import synthetic_batch


def test_sigmoid_loss_prefers_matched_pairs():
    x = jnp.eye(4, 8)
    matched = sigmoid_loss(x, x, jnp.log(10.0), -5.0)
    shuffled = sigmoid_loss(x, x[::-1], jnp.log(10.0), -5.0)
    assert float(matched) < float(shuffled)


def test_pretraining_reduces_the_loss_on_a_fixed_batch():
    cfg = ExperimentConfig(model=presets.tiny(), seq_len=256,
                           train=TrainConfig(und_batch=0, gen_batch=8, text_batch=0))
    batch = synthetic_batch(cfg)
    out = pretrain_siglip(cfg.model.siglip, cfg.model.llm.vocab_size, itertools.repeat(batch), 40,
                          lr=3e-3, log=lambda *_: None)
    assert out["last_loss"] < 0.5 * out["first_loss"]
    assert set(out["params"]) >= {"blocks", "patch_embed", "pos_embed", "attn_pool"}
    assert np.isfinite(out["last_loss"])
