"""Train Janus-Pro's VQ tokenizer on the run's images (the recipe's "vq" phase).

Janus-Pro starts from LlamaGen's trained VQ-16; for the built-in shapes run there is none to
download, so the recipe trains the tiny one first (losses in ``objectives/vq.py``) on the
generation stream's images, then keeps it frozen while the LLM learns to predict its codes.
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from janusflow.configs.schema import VQConfig
from janusflow.models.vq_tokenizer import VQTokenizer
from janusflow.objectives.vq import vq_losses


def pretrain_vq(cfg: VQConfig, batches, steps: int, *, lr: float = 1e-3, seed: int = 0,
                log: Callable = print) -> dict:
    """Train on ``batches`` of {"gen": {"images" (B, H, W, 3) in [-1, 1], ...}}; returns the
    first and last losses, the codebook usage of the last steps and the tokenizer's parameters
    (pure dict, the layout of ``JanusPro.gen_vision``)."""
    tok = VQTokenizer(cfg, rngs=nnx.Rngs(seed))
    opt = nnx.Optimizer(tok, optax.adamw(optax.warmup_cosine_decay_schedule(0, lr, max(steps // 10, 1), steps),
                                         b1=0.9, b2=0.95), wrt=nnx.Param)

    @nnx.jit
    def step(tok, opt, images):
        def loss_fn(t):
            out = vq_losses(t, images)
            return out["loss"], out
        (_, out), grads = nnx.value_and_grad(loss_fn, has_aux=True)(tok)
        opt.update(tok, grads)
        return out

    t0, first, used = time.perf_counter(), None, set()
    tail = max(steps // 10, 1)        # codebook usage over the last tenth of the steps
    for i in range(steps):
        out = jax.device_get(step(tok, opt, jnp.asarray(next(batches)["gen"]["images"])))
        terms = {k: float(out[k]) for k in ("loss", "rec", "codebook", "commit")}
        first = terms if first is None else first
        if i >= steps - tail:
            used.update(np.unique(out["codes"]).tolist())
        if (i + 1) % max(steps // 5, 1) == 0 or i + 1 == steps:
            log(f"vq training step {i + 1}/{steps} loss {terms['loss']:.4f} (reconstruction {terms['rec']:.4f}, "
                f"codebook {terms['codebook']:.4f}, commitment {terms['commit']:.4f}) "
                f"({time.perf_counter() - t0:.0f} s)")
    return {"first": first, "last": terms, "codes_used": len(used), "codebook_size": cfg.codebook_size,
            "params": nnx.to_pure_dict(nnx.state(tok, nnx.Param))}
