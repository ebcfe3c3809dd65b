"""JanusFlow: one LLM, two image paths (paper section 3, official ``modeling_vlm.py``).

Understanding (``model.und_encoder``, configs/variants.py): und_encoder (SigLIP) -> und_aligner -> [beg_of_und_embed, 576 embeddings]
spliced into the text embeddings at the image slots.
Generation: z_t -> gen_encoder -> gen_aligner -> [prompt, t_emb, 576 image tokens] -> LLM ->
final norm -> gen_decoder_norm -> gen_decoder_aligner -> gen_decoder (+ skip) -> velocity.
REPA: repa_projector on the LLM hidden states after block ``repa_layer`` at the image positions.

The VAE is not part of this module: it is frozen throughout and is not in the JanusFlow
checkpoint, so it lives beside the model (``models/vae.py``).

Time convention (JanusFlow's, not REPA's/SD3's): t=0 is noise, t=1 is data; the network sees
``t * TIME_SCALE`` in its time embedding. Methods here take t in [0, 1].
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from janusflow.configs.schema import ModelConfig
from janusflow.models.llm import LLM, RESIDUAL, KVCache
from janusflow.models.parts import PARTS, build_part
from janusflow.parallel.rules import constrain

TIME_SCALE = 1000.0


def compute_dtype(name: str):
    return jnp.bfloat16 if name == "bfloat16" else None


def splice_image_embeds(text, img, image_mask):
    """``text`` (B, T, D) with ``img`` (B, N, D)'s rows written, in order, at the True slots of
    ``image_mask`` (B, T) (Janus-Pro shares this)."""
    idx = jnp.clip(jnp.cumsum(image_mask, axis=1) - 1, 0, img.shape[1] - 1)
    spliced = jnp.take_along_axis(img.astype(text.dtype), idx[..., None], axis=1)
    return constrain(jnp.where(image_mask[..., None], spliced, text), RESIDUAL)


class GenOutput(NamedTuple):
    velocity: jax.Array                     # (B, latent, latent, C), fp32
    repa_pred: Optional[jax.Array]          # (B, N, siglip width) or None
    cache: Optional[KVCache]


class JanusFlow(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        if cfg.head.model != type(self).__name__:
            raise ValueError(f"gen_head={cfg.gen_head!r} (family {cfg.family!r}) is built by "
                             f"{cfg.head.model}, not {type(self).__name__}")
        self.cfg = cfg
        dt = compute_dtype(cfg.dtype)
        self.language_model = LLM(cfg.llm, rngs=rngs, dtype=dt, remat=cfg.remat,
                                  attention_impl=cfg.attention_impl, scan=cfg.scan_layers,
                                  matmul_impl=cfg.matmul_impl)
        # The variant's parts (configs/variants.py), in PARTS order (the init order); the rest
        # are None, which nnx.data keeps a pytree node either way.
        for name in PARTS:
            setattr(self, name, nnx.data(build_part(name, cfg, rngs, dt)))

    # ----------------------------------------------------------------------------- understanding
    def und_image_embeds(self, und_pixels=None, und_latents=None):
        """(B, 1 + N, D): ``beg_of_und_embed`` then the aligned image embeddings.

        ``und_pixels``: SigLIP-normalised images (B, S, S, 3) for ``und_encoder="siglip"``;
        ``und_latents``: scaled VAE latents for the gen-encoder variants (exp. B/C), which see
        the clean image, i.e. t = 1.
        """
        cfg, und = self.cfg, self.cfg.und
        if not und.understands:
            raise ValueError(f"this model has no understanding encoder (und_encoder={cfg.und_encoder!r})")
        encoder, aligner = getattr(self, und.encoder), getattr(self, und.aligner)
        if und.reads_pixels:
            if und_pixels is None:
                raise ValueError(f"und_encoder={cfg.und_encoder!r} needs und_pixels (SigLIP-normalised images)")
            emb = aligner(encoder(und_pixels))
        else:
            if und_latents is None:
                raise ValueError(f"und_encoder={cfg.und_encoder!r} needs und_latents (VAE latents)")
            t = jnp.full((und_latents.shape[0],), TIME_SCALE, jnp.float32)
            x, _ = encoder(und_latents, t)
            emb = aligner(x.reshape(x.shape[0], -1, x.shape[-1]))
        beg = self.beg_of_und_embed[...]
        if cfg.beg_of_und_embed == "official":
            beg = jax.lax.stop_gradient(beg)
        beg = jnp.broadcast_to(beg.astype(emb.dtype), (emb.shape[0], 1, emb.shape[-1]))
        return constrain(jnp.concatenate([beg, emb], axis=1), RESIDUAL)

    def understanding_embeds(self, ids, image_mask, und_pixels=None, und_latents=None):
        """Token embeddings with the image block spliced in where ``image_mask`` (B, T) is True.

        Each row must mark exactly ``1 + num_und_tokens`` consecutive-or-not slots (the
        ``<begin_of_image>`` slot and the image placeholders, in order), or none (text-only
        rows, whose image input is ignored).
        """
        text = self.language_model.embed(ids)
        if image_mask.shape != ids.shape:
            raise ValueError(f"image_mask shape {image_mask.shape} != ids shape {ids.shape}")
        return splice_image_embeds(text, self.und_image_embeds(und_pixels, und_latents), image_mask)

    def understanding_logits(self, ids, attention_mask, image_mask, und_pixels=None, und_latents=None):
        embeds = self.understanding_embeds(ids, image_mask, und_pixels, und_latents)
        out = self.language_model(embeds, attention_mask=attention_mask)
        return self.language_model.logits(out.hidden)

    # -------------------------------------------------------------------------------- generation
    def gen_inputs(self, z_t, t):
        """z_t (B, h, w, C) scaled latents, t (B,) in [0, 1] -> (t_emb (B, D), tokens (B, N, D), skip)."""
        if t.ndim != 1 or t.shape[0] != z_t.shape[0]:
            raise ValueError(f"t must be (batch,) = ({z_t.shape[0]},), got {t.shape}")
        skip, t_emb = self.gen_encoder(z_t, t.astype(jnp.float32) * TIME_SCALE)
        tokens = constrain(self.gen_aligner(skip.reshape(skip.shape[0], -1, skip.shape[-1])), RESIDUAL)
        return t_emb, tokens, skip

    def velocity_from_hidden(self, hidden_img, skip, t_emb):
        """Last-N LLM hidden states (after the LLM's final norm) -> velocity (B, h, w, C) fp32."""
        b, n, _ = hidden_img.shape
        g = skip.shape[1]
        x = self.gen_decoder_aligner(self.gen_decoder_norm(hidden_img)).reshape(b, g, g, -1)
        return self.gen_decoder(x, skip, t_emb).astype(jnp.float32)

    def generate_velocity(self, prompt_embeds, prompt_mask, z_t, t, *, cache=None, start=0,
                          with_repa: bool = False) -> GenOutput:
        """One generation forward: [prompt, t_emb, image tokens] -> velocity.

        ``prompt_embeds`` (B, L, D) are the embeddings of the prompt *without* the generation tag
        token (its slot is taken by t_emb), or None when ``cache`` already holds the prompt at
        positions 0..start-1 (then ``prompt_mask`` is ignored and the 1 + N new tokens are placed
        at ``start``).
        """
        t_emb, tokens, skip = self.gen_inputs(z_t, t)
        new = constrain(jnp.concatenate([t_emb[:, None, :].astype(tokens.dtype), tokens], axis=1), RESIDUAL)
        n = tokens.shape[1]
        if prompt_embeds is not None:
            if prompt_mask is None:
                prompt_mask = jnp.ones(prompt_embeds.shape[:2], bool)
            seq = constrain(jnp.concatenate([prompt_embeds.astype(new.dtype), new], axis=1), RESIDUAL)
            mask = jnp.concatenate([prompt_mask.astype(bool), jnp.ones(new.shape[:2], bool)], axis=1)
        else:
            if cache is None:
                raise ValueError("generate_velocity needs prompt_embeds or a prompt cache")
            seq, mask = new, jnp.ones(new.shape[:2], bool)
        collect = (self.cfg.repa_layer,) if with_repa else ()
        out = self.language_model(seq, attention_mask=mask, cache=cache, start=start, collect=collect)
        v = self.velocity_from_hidden(out.hidden[:, -n:], skip, t_emb)
        repa = None
        if with_repa:
            if self.repa_projector is None:
                raise ValueError("with_repa=True but the model has no REPA projector (repa=False)")
            repa = self.repa_projector(out.layers[self.cfg.repa_layer][:, -n:])
        return GenOutput(v, repa, out.cache)

    def repa_target(self, und_pixels):
        """Stop-gradient SigLIP patch features of the clean image (B, N, width)."""
        if self.und_encoder is None:
            raise ValueError("REPA target needs the SigLIP encoder (repa=True or und_encoder='siglip')")
        return jax.lax.stop_gradient(self.und_encoder(und_pixels))
