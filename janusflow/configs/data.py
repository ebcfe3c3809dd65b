"""The data pipeline's config: which dataset feeds each task stream, and how examples are
tokenised and padded. Plain dataclasses importing nothing heavy, so the experiment config
(and ``--set data.gen.name=...``) can hold them without loading TFDS, grain or PIL."""

from __future__ import annotations

from dataclasses import dataclass

from janusflow.configs.errors import ConfigError

# the official processor's system prompt: before every understanding conversation in training,
# chat and evaluation
SYSTEM_PROMPT = ("You are a helpful language and vision assistant. You are able to understand the "
                 "visual content that the user provides, and assist the user with a variety of "
                 "tasks using natural language.")


@dataclass(frozen=True)
class SourceConfig:
    """One task stream's dataset. ``name`` "" disables the stream.

    ``name``: TFDS name (``janusflow_shapes/32px``, ``my_dataset:1.0.0``) or the directory of
    a prepared dataset (the one holding ``dataset_info.json``). ``data_dir``: TFDS data root
    ("" -> ``$JANUSFLOW_DATA_DIR`` or the TFDS default). The key fields map logical inputs to
    feature paths; a path whose value is a list (several captions, several QA turns) is
    handled per task: a random caption, up to ``max_turns`` random turns.

    ``latents`` (generation only): the dataset was written by ``janusflow data latents``, so
    examples carry the VAE latents (``latents``) instead of ``images`` and the step runs no
    VAE encoder; its VAE config must match the model's (checked when the pipeline opens it).
    For a model generating image tokens (Janus-Pro) they carry the VQ tokenizer's ``codes``
    instead, and the VQ config and token count must match.
    """
    name: str = ""
    split: str = "train"
    data_dir: str = ""
    image: str = "image"
    caption: str = "caption"            # generation; "a|b": a random caption from fields a and b
    question: str = "qa.question"       # understanding (str or list, zipped with answer)
    answer: str = "qa.answer"
    text: str = "text"                  # text (LM) stream
    latents: bool = False               # precomputed VAE latents (gen stream only)

    @property
    def enabled(self) -> bool:
        return bool(self.name)


SHAPES_32 = "janusflow_shapes/32px"
SHAPES_32_ONE_OBJECT = "janusflow_shapes/32px_one_object"   # single_object + colors scenes only


@dataclass(frozen=True)
class DataConfig:
    und: SourceConfig = SourceConfig(name=SHAPES_32)
    gen: SourceConfig = SourceConfig(name=SHAPES_32)
    text: SourceConfig = SourceConfig(name=SHAPES_32, text="description")   # read iff text_batch > 0
    tokenizer: str = ""             # tokenizer.json or checkpoint dir; "" -> built-in shapes BPE
    und_text_len: int = 64          # und row length = 2 + num_und_tokens + und_text_len
    prompt_len: int = 64            # generation prompt ids (BOS ... "Assistant:")
    text_len: int = 128
    # QA turns per understanding example (0: the whole conversation; turns that do not fit
    # und_text_len are dropped whole, so every kept answer is complete and in the loss)
    max_turns: int = 0
    # before every understanding conversation, as the official processor does and as chat and
    # evaluation prompt by default: train with the prompt the model is evaluated with
    system_prompt: str = SYSTEM_PROMPT
    seed: int = 0
    shuffle: bool = True
    num_threads: int = 2            # grain threads decoding + preprocessing per process
    prefetch: int = 64              # examples buffered per task stream
    workers: int = 0                # >0: grain worker processes per task stream (mp_prefetch)
    und_vae_images: str = "auto"    # "auto" | "yes" | "no"
    # Base data mixed into every task stream that is read (a fine-tune keeping some of what the
    # model was trained on): base_share of each stream's rows over the run come from ``base``
    # (its own field names), the rest from the stream's own dataset. Off unless named.
    base: SourceConfig = SourceConfig()
    base_share: float = 0.0

    def __post_init__(self):
        for n in ("und_text_len", "prompt_len", "text_len"):
            if getattr(self, n) < 1:
                raise ConfigError(f"DataConfig.{n}: must be >= 1, got {getattr(self, n)!r}")
        if self.und_vae_images not in ("auto", "yes", "no"):
            raise ConfigError(f"DataConfig.und_vae_images: must be auto|yes|no, got {self.und_vae_images!r}")
        if not (0 <= self.base_share < 1) or bool(self.base_share) != self.base.enabled:
            raise ConfigError(f"DataConfig.base_share: {self.base_share!r} with data.base.name={self.base.name!r}; "
                              "a base dataset needs a share in (0, 1), no base dataset a share of 0")
        for n in ("und", "text"):
            if getattr(self, n).latents:
                raise ConfigError(f"DataConfig.{n}.latents: only the gen stream reads precomputed "
                                 "latents (understanding images are padded, not cropped, so the gen "
                                 "latents do not apply)")
