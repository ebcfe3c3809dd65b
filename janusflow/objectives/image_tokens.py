"""Janus-Pro's generation objective: next-token cross entropy over the VQ codebook at the image
positions (Janus / Janus-Pro train the image head as an ordinary language-model head whose
vocabulary is the image tokens; LlamaGen likewise).

Sequence of one generation example, as the sampler (``sample/ar_generate.py``) builds it:

    [left padding] BOS ... <begin_of_image> | code_0 ... code_{N-2}

Position ``L - 1 + i`` (the ``<begin_of_image>`` slot for i = 0, then code i-1) predicts
``code_i``: the same teacher-forced forward the cached sampler is tested against. Every one of
the N codes of every row counts (no masking), so the mean is per image token.
"""

from __future__ import annotations

import jax.numpy as jnp

from janusflow.objectives.ar import ar_loss


def image_token_logits(model, prompt_ids, prompt_mask, codes):
    """Logits (B, N, codebook) predicting ``codes`` (B, N) after the prompt (B, L) that ends in
    ``<begin_of_image>`` (left-padded; ``prompt_mask`` False on the padding)."""
    if codes.ndim != 2 or codes.shape[0] != prompt_ids.shape[0]:
        raise ValueError(f"codes must be (batch, tokens) with batch {prompt_ids.shape[0]}, got {codes.shape}")
    lm = model.language_model
    n = codes.shape[1]
    fed = codes[:, :-1]
    embeds = jnp.concatenate([lm.embed(prompt_ids), model.gen_image_embeds(fed)], axis=1)
    mask = jnp.concatenate([prompt_mask.astype(bool), jnp.ones(fed.shape, bool)], axis=1)
    hidden = lm(embeds, attention_mask=mask).hidden[:, -n:]
    return model.image_logits(hidden)


def image_token_loss(model, prompt_ids, prompt_mask, codes):
    """(loss_sum, count): cross entropy summed over every image token of the batch, and the
    number of image tokens (B * N)."""
    logits = image_token_logits(model, prompt_ids, prompt_mask, codes)
    return ar_loss(logits, codes.astype(jnp.int32), jnp.ones(codes.shape, bool))
