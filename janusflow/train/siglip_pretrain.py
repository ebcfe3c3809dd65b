"""Pre-train a (tiny) SigLIP understanding encoder with the SigLIP sigmoid loss.

JanusFlow starts from a pre-trained SigLIP; for the built-in shapes run there is none to
download, so the default recipe makes one: image tower = our SigLIP (its attention-pool head
gives the image embedding), text tower = a small bag-of-tokens encoder used only here. The
pairs are the generation stream's (image, caption) batches, so no extra data path is needed.
Loss (Zhai et al. 2023): -mean log sigmoid(z_ij * (t <x_i, y_j> + b)), z_ij = +1 iff i == j.
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from janusflow.configs.schema import SiglipConfig
from janusflow.models.layers import Linear, normal, param
from janusflow.models.siglip import SiglipVisionTower


class TextTower(nnx.Module):
    """Mean of token embeddings over the caption, then a projection to the image width."""

    def __init__(self, vocab: int, width: int, *, rngs: nnx.Rngs):
        self.embed = param(rngs, normal(0.02), (vocab, width), ("vocab", "vit_embed"))
        self.proj = Linear(width, width, axes=("vit_embed", None), rngs=rngs)

    def __call__(self, ids, mask):
        e = jnp.take(self.embed[...], ids, axis=0)
        m = mask.astype(e.dtype)[..., None]
        return self.proj(jnp.sum(e * m, 1) / jnp.maximum(jnp.sum(m, 1), 1.0))


class SiglipPair(nnx.Module):
    def __init__(self, cfg: SiglipConfig, vocab: int, *, rngs: nnx.Rngs, scan: bool = False):
        if not cfg.attn_pool:
            raise ValueError("SigLIP pre-training uses the attention-pool head: set attn_pool=True")
        self.image = SiglipVisionTower(cfg, rngs=rngs, scan=scan)
        self.text = TextTower(vocab, cfg.width, rngs=rngs)
        self.log_t = nnx.Param(jnp.asarray(jnp.log(10.0)), axes=())
        self.bias = nnx.Param(jnp.asarray(-10.0), axes=())


def sigmoid_loss(img, txt, log_t, bias):
    img = img / jnp.linalg.norm(img, axis=-1, keepdims=True).clip(1e-6)
    txt = txt / jnp.linalg.norm(txt, axis=-1, keepdims=True).clip(1e-6)
    logits = jnp.exp(log_t) * img @ txt.T + bias
    z = 2.0 * jnp.eye(img.shape[0]) - 1.0
    return -jnp.mean(jax.nn.log_sigmoid(z * logits)) * img.shape[0]


def pretrain_siglip(cfg: SiglipConfig, vocab: int, batches, steps: int, *, lr: float = 1e-3,
                    seed: int = 0, log: Callable = print, scan: bool = False) -> dict:
    """Train on ``batches`` of {"repa_pixels", "prompt_ids", "prompt_mask"} (the generation
    stream's layout); returns the image tower's parameters (pure dict, our layout; ``scan``:
    stacked blocks, the layout of a model with ``scan_layers``)."""
    model = SiglipPair(cfg, vocab, rngs=nnx.Rngs(seed), scan=scan)
    opt = nnx.Optimizer(model, optax.adamw(optax.warmup_cosine_decay_schedule(0, lr, max(steps // 10, 1), steps),
                                           b1=0.9, b2=0.95), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, pixels, ids, mask):
        def loss_fn(m):
            img = m.image.pool(m.image(pixels))
            return sigmoid_loss(img, m.text(ids, mask), m.log_t[...], m.bias[...])
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    t0, first = time.perf_counter(), None
    for i in range(steps):
        b = next(batches)["gen"]
        loss = float(step(model, opt, jnp.asarray(b["repa_pixels"]), jnp.asarray(b["prompt_ids"]),
                          jnp.asarray(b["prompt_mask"])))
        first = loss if first is None else first
        if (i + 1) % max(steps // 5, 1) == 0 or i + 1 == steps:
            log(f"siglip pre-training step {i + 1}/{steps} sigmoid loss {loss:.4f} "
                f"({time.perf_counter() - t0:.0f} s)")
    return {"first_loss": first, "last_loss": loss,
            "params": nnx.to_pure_dict(nnx.state(model.image, nnx.Param))}
