"""The training data pipeline: TFDS sources -> grain (shard, shuffle, repeat, preprocess in
threads) -> fixed-size task batches in exactly the layout of ``janusflow/train/step.py``.

  und:  ids, attention_mask, image_mask, loss_mask (B_u, und_len); pixels (B_u, S, S, 3)
        SigLIP-normalised [when the und encoder reads pixels]; vae_images (B_u, H, W, 3) in [-1, 1]
        [when it reads latents (the gen-encoder ablations), or und_vae_images='yes']
  gen:  prompt_ids, prompt_mask (B_g, prompt_len), LEFT-padded so the prompt ends right before
        the t_emb slot (positions are contiguous, as at sampling time); images (B_g, H, W, 3) in
        [-1, 1], or latents (B_g, h, w, C) when ``gen.latents`` (a ``janusflow data latents``
        dataset; see ``data/latents.py``) -- codes (B_g, N) int32 instead for a model generating
        image tokens (Janus-Pro); repa_pixels (B_g, S, S, 3) [when REPA is on]
  text: ids, attention_mask, loss_mask (B_t, text_len)
ids are int32, masks bool, images float32; und/text rows are right-padded with the pad id.

Sequences are padded, not packed: packing several examples into one row needs per-segment
attention masks and position resets, which the LLM does not take yet.

Batch sizes are per process (global / process_count) from ``cfg.train.{und,gen,text}_batch``
(set them from ratios with :func:`janusflow.data.mixing.with_task_ratios`).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from janusflow.configs.data import SYSTEM_PROMPT, DataConfig, SourceConfig
from janusflow.configs.errors import ConfigError
from janusflow.configs.variants import RECTIFIED_FLOW, GenHead
from janusflow.data import preprocess as pp
from janusflow.data.latents import FEATURE as LATENTS_FEATURE
from janusflow.data.latents import check_source as check_latents_source
from janusflow.data.latents import precomputed_input
from janusflow.data.mixing import TASKS, MixedIterator, base_stream, batch_phases, task_batches_at
from janusflow.data.sources import (as_text, as_text_list, get_field, open_source,
                                    task_dataset)
from janusflow.data.tokenizer import Tokenizer, conversation_example, generation_prompt_ids

# ---------------------------------------------------------------------- processors
class _Processor:
    """grain ``random_map`` transform: raw record -> padded example, or a skip marker."""

    def __call__(self, record, rng):
        if "_skip" in record:
            return {"_skip": record["_skip"]}
        flags: list = []
        try:
            out = self.process(record, rng, flags)
        except pp.BadExample as e:
            return {"_skip": e.reason}
        except Exception as e:  # noqa: BLE001 - one bad record must not stop a long run
            return {"_skip": f"error_{type(e).__name__}"}
        out["_flags"] = flags
        return out


def _pad(a, length, value, left=False):
    a = np.asarray(a)
    pad = np.full((length - len(a),), value, a.dtype)
    return np.concatenate([pad, a] if left else [a, pad])


def whole_turns_end(loss_mask, length: int) -> int:
    """End (exclusive) of the last answer that ends within ``length`` tokens: cutting there
    keeps whole turns only. 0 when not even the first answer fits."""
    m = np.asarray(loss_mask, bool)
    ends = np.flatnonzero(m & ~np.append(m[1:], False)) + 1     # one past each answer's <eos>
    ends = ends[ends <= length]
    return int(ends[-1]) if len(ends) else 0


@dataclasses.dataclass
class UndProcessor(_Processor):
    tok: Tokenizer
    keys: SourceConfig
    length: int
    num_image_tokens: int
    siglip: tuple            # (size, mean, std) or None
    vae_size: int | None
    roles: tuple             # the family's (user, assistant) names (ModelConfig.head.roles)
    max_turns: int = 0
    system_prompt: str = SYSTEM_PROMPT

    def process(self, record, rng, flags):
        img = pp.decode_image(get_field(record, self.keys.image), flags)
        qs = as_text_list(get_field(record, self.keys.question))
        ans = as_text_list(get_field(record, self.keys.answer))
        turns = [(q, a) for q, a in zip(qs, ans) if a.strip()]
        if not turns:
            raise pp.BadExample("empty_text")
        if self.max_turns and len(turns) > self.max_turns:
            keep = np.sort(rng.choice(len(turns), self.max_turns, replace=False))
            turns = [turns[i] for i in keep]
        ids, image_mask, loss_mask = conversation_example(self.tok, turns, self.num_image_tokens,
                                                          self.system_prompt, roles=self.roles)
        if len(ids) > self.length:
            keep = whole_turns_end(loss_mask, self.length)
            if keep:                                      # the turns that fit, each whole
                ids, image_mask, loss_mask = ids[:keep], image_mask[:keep], loss_mask[:keep]
                flags.append("turns_dropped")
        if len(ids) > self.length:
            if int(np.argmax(loss_mask)) >= self.length:
                raise pp.BadExample("too_long")           # not one answer token would fit
            ids, image_mask, loss_mask = ids[:self.length], image_mask[:self.length], loss_mask[:self.length]
            flags.append("truncated")
        n = self.length
        out = {"ids": _pad(ids, n, self.tok.pad_id), "attention_mask": _pad(np.ones(len(ids), bool), n, False),
               "image_mask": _pad(image_mask, n, False), "loss_mask": _pad(loss_mask, n, False)}
        if self.siglip is not None:
            size, mean, std = self.siglip
            out["pixels"] = pp.to_siglip(pp.resize_long_side_pad(img, size, pp.mean_color(mean)), mean, std)
        if self.vae_size:
            fill = pp.mean_color(self.siglip[1]) if self.siglip else (127, 127, 127)
            out["vae_images"] = pp.to_vae(pp.resize_long_side_pad(img, self.vae_size, fill))
        return out


@dataclasses.dataclass
class GenProcessor(_Processor):
    tok: Tokenizer
    keys: SourceConfig
    length: int
    image_size: int
    repa: tuple | None       # (size, mean, std) or None
    # the generation head (ModelConfig.head): its family's prompt template; an autoregressive
    # head's examples carry the official unconditional row too (uncond_prompt_ids), which its
    # CFG dropout reads
    head: GenHead
    # (feature, shape, dtype) of data/latents.py's precomputed_input: read the stored latents
    # (or VQ codes) instead of the images
    precomputed: tuple | None = None

    def prompt_ids(self, caption: str, flags) -> list:
        ids = generation_prompt_ids(self.tok, caption, self.head)
        if len(ids) <= self.length:
            return ids
        flags.append("truncated")
        body = self.tok.encode(caption, add_bos=False)
        budget = len(body) - (len(ids) - self.length)
        while budget > 0:
            ids = generation_prompt_ids(self.tok, self.tok.decode(body[:budget]), self.head)
            if len(ids) <= self.length:
                return ids
            budget -= max(1, len(ids) - self.length)
        raise pp.BadExample("too_long")                  # the template alone does not fit

    def process(self, record, rng, flags):
        # "caption|description": one random caption among all those fields hold (mixed caption
        # styles, as text-to-image training mixes alt-texts and detailed re-captions)
        caps = [c.strip() for path in self.keys.caption.split("|")
                for c in as_text_list(get_field(record, path))]
        caps = [c for c in caps if c]
        if not caps:
            raise pp.BadExample("empty_caption")
        caption = caps[int(rng.integers(len(caps)))] if len(caps) > 1 else caps[0]
        ids = self.prompt_ids(caption, flags)
        out = {"prompt_ids": _pad(np.asarray(ids, np.int32), self.length, self.tok.pad_id, left=True),
               "prompt_mask": _pad(np.ones(len(ids), bool), self.length, False, left=True)}
        if self.head.autoregressive:
            from janusflow.sample.ar_generate import uncond_prompt_ids
            out["uncond_prompt_ids"] = uncond_prompt_ids(out["prompt_ids"][None], out["prompt_mask"][None],
                                                         self.tok.pad_id)[0]
        if self.precomputed is not None:
            feature, shape, dtype = self.precomputed
            z = np.asarray(get_field(record, feature), dtype)
            if z.shape != shape:
                raise pp.BadExample(f"bad_{feature}", f"shape {z.shape}, expected {shape}")
            out[feature] = z
            if self.repa is None:
                return out                      # the image is not needed at all
            # REPA sees the same (centre) crop the latents were encoded from
            crop = pp.resize_short_side_random_crop(
                pp.decode_image(get_field(record, self.keys.image), flags), self.image_size, None)
        else:
            img = pp.decode_image(get_field(record, self.keys.image), flags)
            crop = pp.resize_short_side_random_crop(img, self.image_size, rng)
            out["images"] = pp.to_vae(crop)
        if self.repa is not None:
            size, mean, std = self.repa
            out["repa_pixels"] = pp.to_siglip(pp.resize(crop, size, size), mean, std)
        return out


@dataclasses.dataclass
class TextProcessor(_Processor):
    tok: Tokenizer
    keys: SourceConfig
    length: int

    def process(self, record, rng, flags):
        text = as_text(get_field(record, self.keys.text)).strip()
        if not text:
            raise pp.BadExample("empty_text")
        ids = self.tok.encode(text) + [self.tok.eos_id]
        if len(ids) > self.length:
            ids = ids[:self.length]
            flags.append("truncated")
        mask = _pad(np.ones(len(ids), bool), self.length, False)
        return {"ids": _pad(np.asarray(ids, np.int32), self.length, self.tok.pad_id),
                "attention_mask": mask, "loss_mask": mask.copy()}


# ---------------------------------------------------------------------- tokenizer
@functools.lru_cache(maxsize=4)
def shapes_tokenizer(vocab_size: int = 512, roles: tuple = RECTIFIED_FLOW.roles) -> Tokenizer:
    """Byte-level BPE trained on the shapes world's vocabulary and the chat templates between
    ``roles`` (a family's speakers, ``ModelConfig.head.roles``; deterministic, no download;
    cached per process)."""
    from janusflow.shapes import world as shapes
    from janusflow.shapes.dataset import describe
    from janusflow.data.tokenizer import SEP, build_tiny_tokenizer
    user, assistant = roles
    texts = [f"{user}: {m['prompt']}{SEP}{assistant}:" for tag in shapes.TAGS
             for m in shapes.prompts_for(tag, "all")]
    rng = np.random.default_rng(0)
    for i in range(400):
        n = 1 + i % 4
        objs = [shapes.Obj(shapes.SHAPES[int(rng.integers(6))], shapes.COLORS[int(rng.integers(10))],
                           (2 + 10 * k, 2 + 10 * ((k * 7 + i) % 4), 10 + 10 * k, 10 + 10 * ((k * 7 + i) % 4)))
                for k in range(n)]
        texts += [f"\n{q}{SEP}{assistant}: {a}" for q, a, _ in shapes.questions(objs, rng)]
        texts.append(describe(objs))
    texts += [SYSTEM_PROMPT, "0123456789"]
    return build_tiny_tokenizer(texts, min(vocab_size, 4096))


def load_tokenizer(data: DataConfig, model_cfg) -> Tokenizer:
    tok = (Tokenizer.load(data.tokenizer) if data.tokenizer
           else shapes_tokenizer(model_cfg.llm.vocab_size, model_cfg.head.roles))
    if tok.vocab_size > model_cfg.llm.vocab_size:
        raise ValueError(f"tokenizer has {tok.vocab_size} tokens but the model's vocab_size is "
                         f"{model_cfg.llm.vocab_size}: ids would index past the embedding table")
    return tok


# ---------------------------------------------------------------------- pipeline
def task_outputs(cfg, data: DataConfig):
    m = cfg.model
    sig = (m.siglip.image_size, tuple(m.siglip.pixel_mean), tuple(m.siglip.pixel_std))
    und_vae = (m.und.reads_latents if data.und_vae_images == "auto"
               else data.und_vae_images == "yes")
    use_repa = m.repa and cfg.train.loss.repa_weight > 0
    return {"und_pixels": sig if m.und.reads_pixels else None,
            "und_vae": m.image_size if und_vae else None, "repa": sig if use_repa else None}


def und_row_len(cfg, data: DataConfig | None = None) -> int:
    """Tokens of an understanding row: BOS, the image block and ``und_text_len`` text tokens
    (system prompt, questions, answers), at most ``seq_len``."""
    data = cfg.data if data is None else data
    return min(cfg.seq_len, 2 + cfg.model.num_und_tokens + data.und_text_len)


def processors(cfg, data: DataConfig, tok: Tokenizer) -> dict:
    m, o = cfg.model, task_outputs(cfg, data)
    und_len = und_row_len(cfg, data)
    if und_len < m.num_und_tokens + 8:
        raise ConfigError(f"seq_len: understanding rows of {und_len} tokens (seq_len {cfg.seq_len}) cannot hold "
                         f"the {m.num_und_tokens + 2} image slots and a question/answer")
    if data.prompt_len + 1 + m.num_gen_tokens > m.llm.max_position_embeddings:
        raise ConfigError(f"data.prompt_len: {data.prompt_len} + 1 + {m.num_gen_tokens} image tokens exceeds "
                         f"the model context {m.llm.max_position_embeddings}")
    if data.text_len > cfg.seq_len:
        raise ConfigError(f"data.text_len: {data.text_len} exceeds seq_len {cfg.seq_len}")
    return {"und": UndProcessor(tok, data.und, und_len, m.num_und_tokens, o["und_pixels"], o["und_vae"],
                                m.head.roles, data.max_turns, data.system_prompt),
            "gen": GenProcessor(tok, data.gen, data.prompt_len, m.image_size, o["repa"], m.head,
                                precomputed_input(m) if data.gen.latents else None),
            "text": TextProcessor(tok, data.text, data.text_len)}


def per_process_batch_sizes(cfg, process_count: int, step: int = 0) -> dict:
    """This process's rows per task at ``step`` (``train.task_batch_schedule`` applies)."""
    m = cfg.model
    g = task_batches_at(cfg.train, step)
    sizes = {"und": g["und"] if m.und.understands else 0,
             "gen": g["gen"] if m.gen_enabled else 0, "text": g["text"]}
    for k, v in sizes.items():
        if v % process_count:
            raise ValueError(f"train.{k}_batch={v} (step {step}) is not divisible by the "
                             f"{process_count} processes")
    return {k: v // process_count for k, v in sizes.items()}


def check_sources_named(cfg, data: DataConfig | None = None) -> None:
    """Every task stream the batch draws from names its dataset (one line naming the field)."""
    data = cfg.data if data is None else data
    for task, n in per_process_batch_sizes(cfg, 1).items():
        if n and not getattr(data, task).enabled:
            raise ConfigError(f"data.{task}.name is empty: train.{task}_batch={n} but data.{task} names no "
                              f"dataset (--set data.{task}.name=NAME_OR_DIR)")


def needed_fields(task: str, keys: SourceConfig, feature: str = LATENTS_FEATURE) -> tuple:
    """The feature paths a task stream reads (``caption`` "a|b" reads both); ``feature``: what a
    precomputed source stores (``precomputed_input(model).feature``: latents or codes)."""
    need = {"und": (keys.image, keys.question, keys.answer), "gen": (keys.image, *keys.caption.split("|")),
            "text": (keys.text,)}[task]
    return need + ((feature,) if keys.latents else ())


def task_sources(data: DataConfig, task: str) -> list:
    """(config name, SourceConfig) of every dataset a task stream reads: its own, and the base
    data mixed into it when ``data.base`` names one."""
    return [(f"data.{task}", getattr(data, task))] + ([("data.base", data.base)] if data.base.enabled else [])


def dataset_label(keys: SourceConfig) -> str:
    where = f" in {keys.data_dir}" if keys.data_dir else ""
    return f"dataset {keys.name!r} ({keys.split}){where}"


def missing_fields(task: str, keys: SourceConfig, record: dict, where: str = "",
                   feature: str = LATENTS_FEATURE) -> list[str]:
    """One line per field the task reads that ``record`` lacks (``where``: the config naming
    the dataset, default ``data.<task>``; ``feature``: as for :func:`needed_fields`)."""
    where = where or f"data.{task}"
    out = []
    for path in needed_fields(task, keys, feature):
        try:
            get_field(record, path)
        except KeyError:
            out.append(f"{dataset_label(keys)}: record 0: field {path!r} missing ({where} reads it; the "
                       f"record has {sorted(record)}; set {where}.{_key_name(task, keys, path)} to one of them)")
    return out


def _key_name(task, keys: SourceConfig, path: str) -> str:
    for f in ("image", "caption", "question", "answer", "text"):
        if path in getattr(keys, f).split("|"):
            return f
    return "latents"


def _check_fields(task, source, keys: SourceConfig, where: str = "", feature: str = LATENTS_FEATURE):
    """A field the stream reads that its dataset lacks: one line naming it (data/check.py)."""
    missing = missing_fields(task, keys, source[0], where, feature)
    if missing:
        raise ConfigError(missing[0])


def make_pipeline(cfg, data: DataConfig = DataConfig(), tokenizer: Tokenizer | None = None, *,
                  process_index: int | None = None, process_count: int | None = None) -> MixedIterator:
    """Iterator of host-local batches for this process (its shard of every source)."""
    import grain
    if process_index is None or process_count is None:
        import jax
        process_index, process_count = jax.process_index(), jax.process_count()
    tok = tokenizer or load_tokenizer(data, cfg.model)
    if tok.vocab_size > cfg.model.llm.vocab_size:
        raise ValueError(f"tokenizer has {tok.vocab_size} tokens > model vocab_size {cfg.model.llm.vocab_size}")
    check_sources_named(cfg, data)
    sizes = per_process_batch_sizes(cfg, process_count)
    # a stream is opened when any phase of the ratio schedule reads it
    needed = {t for start, _, _ in batch_phases(cfg.train)
              for t, n in per_process_batch_sizes(cfg, process_count, start).items() if n}
    procs = processors(cfg, data, tok)
    if data.base.enabled and data.base.latents != data.gen.latents and "gen" in needed:
        raise ConfigError(f"data.base.latents={data.base.latents} but data.gen.latents={data.gen.latents}: "
                          "mixed rows must carry the same inputs (images or precomputed latents)")

    def stream(task, src_cfg, where, salt):
        if src_cfg.latents:
            check_latents_source(src_cfg, cfg.model)   # encoder config + stored shape == the model's
        source = open_source(src_cfg, src_cfg.image if task != "text" else None)
        _check_fields(task, source, src_cfg, where, precomputed_input(cfg.model).feature)
        seed = (data.seed * 1_000_003 + 7919 * salt) % 2**32
        ds = task_dataset(source, seed=seed, shard_index=process_index, shard_count=process_count,
                          shuffle=data.shuffle)
        ds = ds.random_map(procs[task], seed=(seed + 104729 * (process_index + 1)) % 2**32)
        opts = grain.ReadOptions(num_threads=data.num_threads, prefetch_buffer_size=data.prefetch)
        ids = ds.to_iter_dataset(opts)
        if data.workers:
            from absl import flags
            if not flags.FLAGS.is_parsed():
                flags.FLAGS.mark_as_parsed()        # grain's worker code reads absl flags
            # Processes sidestep the GIL for the Python/numpy parts of preprocessing; the
            # output (and the checkpointed position) stays deterministic for a fixed count.
            ids = ids.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.workers))
        return iter(ids)

    iters = {}
    for k, task in enumerate(TASKS):
        if task not in needed:
            continue
        for j, (where, src_cfg) in enumerate(task_sources(data, task)):
            iters[base_stream(task) if j else task] = stream(task, src_cfg, where, k + 1 + j * len(TASKS))
    return MixedIterator(iters, sizes, base_share=data.base_share)
