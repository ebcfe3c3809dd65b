"""VQ tokenizer training losses (VQ-VAE, van den Oord et al. 2017; LlamaGen's VQ-16 recipe,
which Janus-Pro's tokenizer comes from), without LlamaGen's perceptual and GAN terms:

    L = ||x - D(sg_st(z_q))||^2  +  ||z_q - sg(z)||^2  +  beta * ||sg(z_q) - z||^2

the reconstruction (pixels in [-1, 1], mean squared error), the codebook loss (moves the chosen
entries toward the encoder outputs) and the commitment loss (beta 0.25, keeps the encoder near
its entries). With the l2-normalised codebook both z and z_q are unit vectors (LlamaGen,
``codebook_l2_norm``). The decoder reads z through the straight-through estimator.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

COMMIT_BETA = 0.25      # LlamaGen / VQ-VAE


def vq_losses(tokenizer, images, beta: float = COMMIT_BETA) -> dict:
    """Per-batch means: {"rec", "codebook", "commit", "loss" (their sum, commit weighted by
    beta), "codes" (B, h, w) int32}."""
    z = tokenizer.encode_latents(images)
    codes, zf, zq = tokenizer.quantize.nearest(z)
    codebook = jnp.mean(jnp.square(zq - jax.lax.stop_gradient(zf)))
    commit = jnp.mean(jnp.square(jax.lax.stop_gradient(zq) - zf))
    rec = tokenizer.decode_latents(zf + jax.lax.stop_gradient(zq - zf)).astype(jnp.float32)
    rec_loss = jnp.mean(jnp.square(rec - images.astype(jnp.float32)))
    return {"rec": rec_loss, "codebook": codebook, "commit": commit,
            "loss": rec_loss + codebook + beta * commit, "codes": codes}
