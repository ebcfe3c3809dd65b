"""Image understanding ("chat"): preprocessing, the understanding prompt, KV-cache decoding.

Sequence (spec section 2): ``BOS [system] User: <begin_of_image> [N image embeddings]
<end_of_image>\\n{question}\\n\\nAssistant:`` then the answer (Janus-Pro's speakers are
``<|User|>``/``<|Assistant|>``: ``GenHead.roles``). The ``<begin_of_image>`` slot
carries ``beg_of_und_embed`` and the N placeholders the aligned SigLIP features
(``JanusFlow.understanding_embeds``). With a tokenizer the ids come from
``janusflow.data.tokenizer``; without one the caller gives the question ids and an
:class:`UnderstandingTemplate` of special and fixed ids.

Decoding: one compiled program prefills the (left-padded) prompts into a KV cache, then feeds
one token per step inside ``lax.while_loop`` until every row has produced EOS or
``max_new_tokens`` tokens. Greedy when temperature == 0, else temperature + top-p sampling.
The loop runs on per-layer weights and a per-layer KV cache, as the image-token sampler does
(``sample/layout.py``): a model with stacked (scanned) layers is relaid out for the call, so
callers that answer repeatedly (the CLI, the demo) relay out once and pass the result.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from janusflow.configs.schema import ModelConfig
from janusflow.data import preprocess
from janusflow.models.llm import KVCache
from janusflow.models.vae import encode_latents
from janusflow.sample.generate import bucket_len
from janusflow.sample.layout import decoding_model

@dataclasses.dataclass(frozen=True)
class UnderstandingTemplate:
    """Token ids of the understanding prompt around the image and the question:
    ``[bos] before_image [begin_of_image] [image]*N [end_of_image] after_image question
    after_question``. ``before_image`` holds e.g. the ids of "User: " (and a system prompt),
    ``after_image`` of "\\n", ``after_question`` of "\\n\\nAssistant:"."""
    bos: int
    eos: int
    begin_of_image: int
    image: int
    end_of_image: int
    before_image: tuple = ()
    after_image: tuple = ()
    after_question: tuple = ()

    def build(self, question_ids: Sequence[int], num_image_tokens: int):
        """(ids list, image_mask list): the mask marks the begin_of_image slot + N placeholders."""
        head = [self.bos, *self.before_image]
        img = [self.begin_of_image] + [self.image] * num_image_tokens
        tail = [self.end_of_image, *self.after_image, *question_ids, *self.after_question]
        ids = head + img + tail
        mask = [False] * len(head) + [True] * len(img) + [False] * len(tail)
        return ids, mask


# ------------------------------------------------------------------------------ images
def _as_image_list(images) -> list[np.ndarray]:
    if isinstance(images, (np.ndarray, jax.Array)):
        arr = np.asarray(images)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4:
            raise ValueError(f"images must be (B, H, W, 3) or (H, W, 3), got shape {arr.shape}")
        return list(arr)
    if isinstance(images, (list, tuple)):
        return [np.asarray(x) for x in images]
    raise ValueError(f"images must be an array or a list of arrays, got {type(images).__name__}")


def _to_uint8(img: np.ndarray, i: int) -> np.ndarray:
    """The official processor works on 8-bit images: floats in [0, 1] are rounded to them."""
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"image {i}: expected (H, W, 3) RGB, got shape {img.shape}")
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"image {i}: empty image of shape {img.shape}")
    if img.dtype == np.uint8:
        return img
    if not np.issubdtype(img.dtype, np.floating):
        raise ValueError(f"image {i}: expected uint8 or float in [0, 1], got dtype {img.dtype}")
    if not np.isfinite(img).all() or img.min() < -1e-3 or img.max() > 1 + 1e-3:
        raise ValueError(f"image {i}: float images must lie in [0, 1], got range "
                         f"[{np.nanmin(img):.3g}, {np.nanmax(img):.3g}]")
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def square_images(images, size: int, fill) -> list[np.ndarray]:
    """Official understanding layout: long side to ``size``, centred padding with ``fill``."""
    out = [preprocess.resize_long_side_pad(_to_uint8(img, i), size, fill)
           for i, img in enumerate(_as_image_list(images))]
    if not out:
        raise ValueError("no images given")
    return out


def siglip_pixels(images, cfg: ModelConfig) -> np.ndarray:
    """Images (uint8 or float in [0, 1], any sizes) -> SigLIP input (B, S, S, 3)."""
    sc = cfg.siglip
    squares = square_images(images, sc.image_size, preprocess.mean_color(sc.pixel_mean))
    return np.stack([preprocess.to_siglip(x, sc.pixel_mean, sc.pixel_std) for x in squares])


def load_image(path: str) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB; unreadable files and images over
    :data:`~janusflow.data.preprocess.MAX_PIXELS` (checked before decoding) raise ValueError
    naming the path."""
    try:
        return preprocess.decode_image(preprocess.read_image_file(path))
    except OSError as e:
        raise ValueError(f"cannot read image {path!r}: {e.strerror or e}") from None
    except preprocess.BadExample as e:
        raise ValueError(f"cannot read image {path!r}: {e.detail}") from None


# ----------------------------------------------------------------------------- decoding
def _pick(logits, key, temperature, top_p, greedy: bool):
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    probs = jax.nn.softmax(logits, axis=-1)
    sorted_p = jnp.sort(probs, axis=-1)[:, ::-1]
    # keep the smallest set whose mass reaches top_p (the most likely token always stays)
    keep = (jnp.cumsum(sorted_p, axis=-1) - sorted_p) < top_p
    cutoff = jnp.min(jnp.where(keep, sorted_p, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(probs >= cutoff, logits, -jnp.inf)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _prefill(model, ids, mask, image_mask, pixels, latents, temperature, top_p, key, cache_len, greedy):
    """Run the prompt into a KV cache of ``cache_len`` positions; (first token, cache)."""
    lm = model.language_model
    embeds = model.understanding_embeds(ids, image_mask, und_pixels=pixels, und_latents=latents)
    cache = KVCache.init(model.cfg.llm, ids.shape[0], cache_len, embeds.dtype, per_layer=not lm.scan)
    out = lm(embeds, attention_mask=mask, cache=cache, start=0)
    first = _pick(lm.logits(out.hidden[:, -1]), jax.random.fold_in(key, 0), temperature, top_p, greedy)
    return first, out.cache


def _next(lm, tok, cache, length, i, temperature, top_p, key, greedy):
    """Feed token ``i - 1`` of the answer (at position length + i - 1); (token i, cache)."""
    o = lm(lm.embed(tok[:, None]), cache=cache, start=length + i - 1)
    return _pick(lm.logits(o.hidden[:, -1]), jax.random.fold_in(key, i), temperature, top_p, greedy), o.cache


@partial(jax.jit, static_argnames=("graphdef", "max_new", "greedy"))
def _decode(graphdef, state, ids, mask, image_mask, pixels, latents, eos, temperature, top_p,
            key, *, max_new: int, greedy: bool):
    """(B, max_new) int32 generated tokens, -1 after a row's EOS (EOS itself is kept)."""
    model = nnx.merge(graphdef, state)
    lm = model.language_model
    b, length = ids.shape
    first, cache = _prefill(model, ids, mask, image_mask, pixels, latents, temperature, top_p, key,
                            length + max_new, greedy)
    tokens = jnp.full((b, max_new), -1, jnp.int32).at[:, 0].set(first)

    def cond(c):
        i, _, _, _, done = c
        return (i < max_new) & ~jnp.all(done)

    def body(c):
        i, tok, cache, tokens, done = c
        nxt, cache = _next(lm, tok, cache, length, i, temperature, top_p, key, greedy)
        tokens = tokens.at[:, i].set(jnp.where(done, -1, nxt))
        # finished rows keep feeding EOS: a valid id whose output is discarded
        return i + 1, jnp.where(done, eos, nxt), cache, tokens, done | (nxt == eos)

    init = (jnp.asarray(1, jnp.int32), first, cache, tokens, first == eos)
    return jax.lax.while_loop(cond, body, init)[3]


# The streamed path: the same two computations as _decode, compiled apart so that each token
# reaches the caller (the web demo) as soon as it is picked.
@partial(jax.jit, static_argnames=("graphdef", "cache_len", "greedy"))
def _prefill_program(graphdef, state, ids, mask, image_mask, pixels, latents, temperature, top_p, key,
                     *, cache_len: int, greedy: bool):
    return _prefill(nnx.merge(graphdef, state), ids, mask, image_mask, pixels, latents, temperature,
                    top_p, key, cache_len, greedy)


@partial(jax.jit, static_argnames=("graphdef", "greedy"))
def _next_program(graphdef, state, tok, cache, length, i, temperature, top_p, key, *, greedy: bool):
    return _next(nnx.merge(graphdef, state).language_model, tok, cache, length, i, temperature, top_p,
                 key, greedy)


def _check_decoding(max_new_tokens, temperature, top_p):
    if (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer))
            or max_new_tokens < 1):
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if not np.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")


def tokenizer_prompt(tokenizer, question: str, cfg: ModelConfig, system_prompt: Optional[str] = None):
    """(ids, image_mask) of the understanding prompt of ``cfg``'s family up to the assistant's
    name, from the shared template (``janusflow.data.tokenizer``): the training example cut
    where the answer starts."""
    from janusflow.configs.data import SYSTEM_PROMPT
    from janusflow.data import tokenizer as tok_mod
    system = SYSTEM_PROMPT if system_prompt is None else system_prompt
    ids, image_mask, loss_mask = tok_mod.understanding_example(tokenizer, question, "", cfg.num_und_tokens,
                                                               system, roles=cfg.head.roles)
    cut = int(np.argmax(loss_mask))
    return [int(x) for x in ids[:cut]], [bool(x) for x in image_mask[:cut]]


def _prompts(cfg, tokenizer, questions, template, system_prompt):
    n = cfg.num_und_tokens
    if isinstance(questions, (str, bytes)) or not isinstance(questions, Sequence):
        raise ValueError(f"questions must be a list (one per image), got {type(questions).__name__}")
    if tokenizer is not None:
        built = []
        for i, q in enumerate(questions):
            if not isinstance(q, str) or not q.strip():
                raise ValueError(f"question {i} is empty or not a string: {q!r}")
            built.append(tokenizer_prompt(tokenizer, q, cfg, system_prompt))
        return built, tokenizer.eos_id
    if template is None:
        raise ValueError("without a tokenizer, pass template=UnderstandingTemplate(...) and "
                         "questions as token-id lists")
    built = []
    for i, q in enumerate(questions):
        if isinstance(q, str) or len(q) == 0:
            raise ValueError(f"question {i}: expected a non-empty list of token ids, got {q!r:.60}")
        built.append(template.build([int(x) for x in q], n))
    return built, template.eos


def _inputs(cfg, tokenizer, images, questions, max_new_tokens, template, system_prompt, vae, pad_id):
    """The left-padded prompt batch and the encoder inputs of :func:`answer`'s arguments."""
    imgs = _as_image_list(images)
    built, eos = _prompts(cfg, tokenizer, questions, template, system_prompt)
    if len(imgs) != len(built):
        raise ValueError(f"got {len(imgs)} images but {len(built)} questions (one question per image)")
    ctx = cfg.llm.max_position_embeddings
    longest = max(len(ids) for ids, _ in built)
    if longest + max_new_tokens > ctx:
        raise ValueError(f"prompt of {longest} tokens + max_new_tokens={max_new_tokens} exceeds the "
                         f"model context {ctx}")
    length = bucket_len(longest, ctx - max_new_tokens)
    b = len(built)
    ids = np.full((b, length), pad_id, np.int32)
    mask = np.zeros((b, length), bool)
    image_mask = np.zeros((b, length), bool)
    for r, (row, img_slots) in enumerate(built):
        ids[r, length - len(row):] = row
        mask[r, length - len(row):] = True
        image_mask[r, length - len(row):] = img_slots
    if not cfg.und_begin_slot:
        # Janus-Pro keeps <begin_of_image> a text token: only the N placeholders take the image
        image_mask &= np.cumsum(image_mask, axis=1) > 1
    pixels = latents = None
    if cfg.und.reads_pixels:
        pixels = jnp.asarray(siglip_pixels(imgs, cfg))
    elif cfg.und.reads_latents:
        if vae is None:
            raise ValueError(f"und_encoder={cfg.und_encoder!r} encodes images with the VAE: pass vae=...")
        squares = square_images(imgs, cfg.image_size, preprocess.mean_color((0.5, 0.5, 0.5)))
        latents = encode_latents(vae, cfg.vae, jnp.asarray(np.stack([preprocess.to_vae(x) for x in squares])))
    else:
        raise ValueError("this model has no understanding encoder (und_encoder='none')")
    return (jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(image_mask), pixels, latents, eos)


def answer(model, cfg: ModelConfig, tokenizer, images, questions, *, max_new_tokens: int = 64,
           temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
           template: Optional[UnderstandingTemplate] = None, system_prompt: Optional[str] = None,
           vae=None, pad_id: int = 0) -> list:
    """Answer one question per image.

    ``images``: (B, H, W, 3) uint8 or float in [0, 1], or a list of (H, W, 3) arrays of any
    sizes (preprocessed as the official processor: long side to S, pad to square with the mean
    colour, normalise). ``questions``: B strings with a ``tokenizer`` (returns strings), or B
    token-id lists with ``template`` and ``tokenizer=None`` (returns token-id lists, EOS
    excluded). Decoding stops per row at EOS or after ``max_new_tokens``; ``temperature`` 0 is
    greedy, otherwise sampling restricted to the top-``top_p`` probability mass, seeded by
    ``seed``. ``system_prompt``: None uses the official one (tokenizer path only). ``vae`` is
    needed only by the gen-encoder understanding ablations (B, C).
    """
    _check_decoding(max_new_tokens, temperature, top_p)
    ids, mask, image_mask, pixels, latents, eos = _inputs(cfg, tokenizer, images, questions, max_new_tokens,
                                                          template, system_prompt, vae, pad_id)
    model, cfg = decoding_model(model, cfg)
    graphdef, state = nnx.split(model)
    greedy = temperature == 0
    out = np.asarray(_decode(graphdef, state, ids, mask, image_mask, pixels, latents, jnp.int32(eos),
                             jnp.float32(temperature if not greedy else 1.0), jnp.float32(top_p),
                             jax.random.key(seed), max_new=int(max_new_tokens), greedy=greedy))
    results = []
    for row in out:
        toks = [int(t) for t in row if t >= 0]
        if toks and toks[-1] == eos:
            toks = toks[:-1]
        results.append(toks)
    if tokenizer is not None:
        return [tokenizer.decode(t) for t in results]
    return results


def stream_answer(model, cfg: ModelConfig, tokenizer, image, question: str, *, max_new_tokens: int = 64,
                  temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                  system_prompt: Optional[str] = None, vae=None, pad_id: int = 0) -> Iterator[str]:
    """:func:`answer` for one image and one question, token by token: yields the decoded answer
    so far after every new token (the last yield is what :func:`answer` returns for the same
    arguments). Needs a tokenizer."""
    if tokenizer is None:
        raise ValueError("stream_answer needs a tokenizer")
    _check_decoding(max_new_tokens, temperature, top_p)
    ids, mask, image_mask, pixels, latents, eos = _inputs(cfg, tokenizer, [image], [question], max_new_tokens,
                                                          None, system_prompt, vae, pad_id)
    model, cfg = decoding_model(model, cfg)
    graphdef, state = nnx.split(model)
    greedy = temperature == 0
    temp, top_p, key = jnp.float32(temperature if not greedy else 1.0), jnp.float32(top_p), jax.random.key(seed)
    length = ids.shape[1]
    tok, cache = _prefill_program(graphdef, state, ids, mask, image_mask, pixels, latents, temp, top_p, key,
                                  cache_len=length + int(max_new_tokens), greedy=greedy)
    tokens = []
    for i in range(1, int(max_new_tokens) + 1):
        t = int(tok[0])
        if t == eos:
            return
        tokens.append(t)
        yield tokenizer.decode(tokens)
        if i < max_new_tokens:
            tok, cache = _next_program(graphdef, state, tok, cache, jnp.int32(length), jnp.int32(i), temp,
                                       top_p, key, greedy=greedy)
