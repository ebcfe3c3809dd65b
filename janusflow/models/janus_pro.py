"""Janus-Pro (arXiv 2501.17811; official ``janus/models/modeling_vlm.py``): the LLM and SigLIP
of JanusFlow, but images are generated as discrete VQ tokens, autoregressively.

Understanding: und_encoder (SigLIP) -> und_aligner (Linear, GELU, Linear) -> 576 embeddings
spliced into the text embeddings at the image slots (``<begin_of_image>`` stays a text token).
Generation: image codes -> gen_embed (codebook-sized table, ``vq.embed_dim`` wide) ->
gen_aligner (Linear, GELU, Linear) -> LLM -> final norm -> gen_head (Linear, GELU, Linear) ->
logits over the ``vq.codebook_size`` image tokens. The VQ tokenizer (``gen_vision``) turns
images into codes and codes into images; it is part of the released checkpoint.
GELU is the exact (erf) one, as torch's ``nn.GELU()``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from janusflow.configs.schema import ModelConfig
from janusflow.models.janusflow import splice_image_embeds
from janusflow.models.layers import Linear, normal, param, use_matmul
from janusflow.models.llm import LLM, RESIDUAL
from janusflow.models.siglip import SiglipVisionTower
from janusflow.models.vq_tokenizer import VQTokenizer
from janusflow.parallel.rules import constrain


def _gelu(x):
    return jax.nn.gelu(x, approximate=False)


class MlpAligner(nnx.Module):
    """Linear -> GELU -> Linear (official ``MlpProjector``, ``mlp_gelu`` of depth 2 at the
    ``layers.0`` / ``layers.2`` indices of its Sequential)."""

    def __init__(self, d_in: int, d_out: int, axes_in: str, *, rngs, dtype=None):
        self.fc1 = Linear(d_in, d_out, axes=(axes_in, "mlp"), rngs=rngs, dtype=dtype)
        self.fc2 = Linear(d_out, d_out, axes=("mlp", "embed"), rngs=rngs, dtype=dtype)

    def __call__(self, x):
        return self.fc2(_gelu(self.fc1(x)))


class GenHead(nnx.Module):
    """LLM hidden states -> image-token logits (official ``vision_head``)."""

    def __init__(self, d: int, hidden: int, codebook_size: int, *, rngs, dtype=None):
        self.output_mlp_projector = Linear(d, hidden, axes=("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.vision_head = Linear(hidden, codebook_size, axes=("embed", "vocab"), rngs=rngs, dtype=dtype)

    def __call__(self, h):
        return self.vision_head(_gelu(self.output_mlp_projector(h)))


class JanusPro(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        if cfg.head.model != type(self).__name__:
            raise ValueError(f"gen_head={cfg.gen_head!r} (family {cfg.family!r}) is built by "
                             f"{cfg.head.model}, not {type(self).__name__}")
        self.cfg = cfg
        dt = jnp.bfloat16 if cfg.dtype == "bfloat16" else None
        d, vq = cfg.llm.hidden_size, cfg.vq
        self.language_model = LLM(cfg.llm, rngs=rngs, dtype=dt, remat=cfg.remat,
                                  attention_impl=cfg.attention_impl, scan=cfg.scan_layers,
                                  matmul_impl=cfg.matmul_impl)
        self.und_encoder = SiglipVisionTower(cfg.siglip, rngs=rngs, dtype=dt, remat=cfg.remat,
                                             attention_impl=cfg.attention_impl, scan=cfg.scan_layers,
                                             matmul_impl=cfg.matmul_impl)
        self.und_aligner = MlpAligner(cfg.siglip.width, d, "vit_embed", rngs=rngs, dtype=dt)
        self.gen_vision = VQTokenizer(vq, rngs=rngs, dtype=dt)
        self.gen_embed = param(rngs, normal(1.0), (vq.codebook_size, vq.embed_dim), ("vocab", None))
        self.gen_aligner = MlpAligner(vq.embed_dim, d, None, rngs=rngs, dtype=dt)
        self.gen_head = GenHead(d, cfg.gen_head_hidden or d, vq.codebook_size, rngs=rngs, dtype=dt)
        # each image token passes through these as well as the LLM: the decoding kernel too
        use_matmul(self.gen_aligner, cfg.matmul_impl)
        use_matmul(self.gen_head, cfg.matmul_impl)

    # ----------------------------------------------------------------------------- understanding
    def und_image_embeds(self, und_pixels):
        """(B, N, D): aligned SigLIP patch features of SigLIP-normalised images (B, S, S, 3)."""
        return constrain(self.und_aligner(self.und_encoder(und_pixels)), RESIDUAL)

    def understanding_embeds(self, ids, image_mask, und_pixels=None, und_latents=None):
        """Token embeddings with the N image embeddings spliced in, in order, where
        ``image_mask`` (B, T) is True (exactly N slots per image row, none for text rows).
        ``und_latents`` exists for JanusFlow's call signature; Janus-Pro reads pixels only."""
        if und_latents is not None:
            raise ValueError("Janus-Pro understanding reads und_pixels, not VAE latents")
        text = self.language_model.embed(ids)
        if image_mask.shape != ids.shape:
            raise ValueError(f"image_mask shape {image_mask.shape} != ids shape {ids.shape}")
        if und_pixels is None:
            raise ValueError("Janus-Pro understanding needs und_pixels (SigLIP-normalised images)")
        return splice_image_embeds(text, self.und_image_embeds(und_pixels), image_mask)

    def understanding_logits(self, ids, attention_mask, image_mask, und_pixels=None, und_latents=None):
        embeds = self.understanding_embeds(ids, image_mask, und_pixels, und_latents)
        out = self.language_model(embeds, attention_mask=attention_mask)
        return self.language_model.logits(out.hidden)

    # -------------------------------------------------------------------------------- generation
    def gen_image_embeds(self, codes):
        """Image codes (B, N) int -> LLM input embeddings (B, N, D)."""
        table = self.gen_embed[...]
        x = jnp.take(table, codes, axis=0)
        return constrain(self.gen_aligner(x.astype(self.language_model.dtype or table.dtype)), RESIDUAL)

    def image_logits(self, hidden):
        """LLM hidden states after its final norm (..., D) -> (..., codebook_size) fp32."""
        return self.gen_head(hidden).astype(jnp.float32)
