"""Tokenizer (Hugging Face ``tokenizers``) and the chat templates of JanusFlow and Janus-Pro.

The released models use the DeepSeek-LLM byte-level BPE tokenizer (``tokenizer.json`` in the
checkpoint) plus the Janus special tokens. The templates follow the official code
(``janus/utils/conversation.py``, "DeepSeek" separator style, ``sep="\\n\\n"``,
``sep2=<｜end▁of▁sentence｜>``, the speaker names taken from the conversation). The speakers
are the family's (``GenHead.roles``): JanusFlow's README and ``demo/app_janusflow.py`` write
``User``/``Assistant``, Janus-Pro's README and ``demo/app_januspro.py`` ``<|User|>``/``<|Assistant|>``:

  understanding  BOS [system\\n\\n] U: <begin_of_image> [N x <image_placeholder>] <end_of_image>
                 \\n{question}\\n\\nA: {answer}<eos>[U: {q2}\\n\\nA: {a2}<eos> ...]
  generation     BOS U: {prompt}\\n\\nA:      then Janus-Pro's ``<begin_of_image>``; JanusFlow's
                 model puts t_emb in that slot, so for JanusFlow the tag is *not* among the ids

(U, A: the user's and the assistant's names.) Text is encoded in pieces split at special
tokens, as ``tokenizers`` itself does when it meets an added token, so the ids equal those of
encoding the whole official string. The only extra split is between ``A:`` and `` {answer}``,
which falls on a pre-tokenizer boundary (punctuation then a space-led word) so it does not
change the ids either (checked in the tests).
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Optional, Sequence

import numpy as np

from janusflow.records import read_json_object

BOS_TOKEN = "<｜begin▁of▁sentence｜>"
EOS_TOKEN = "<｜end▁of▁sentence｜>"
PAD_TOKEN = "<｜▁pad▁｜>"
IMAGE_PLACEHOLDER = "<image_placeholder>"
IMAGE_START = "<begin_of_image>"
IMAGE_END = "<end_of_image>"
GENERATION_TAG = "<｜begin▁of▁generation｜>"
# Order in which the official processor adds the tags when a tokenizer lacks them (it matters:
# it fixes their ids).
JANUS_TAGS = (IMAGE_PLACEHOLDER, GENERATION_TAG, IMAGE_START, IMAGE_END)
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN) + JANUS_TAGS

SEP = "\n\n"


def _token_name(v) -> Optional[str]:
    if isinstance(v, dict):
        return v.get("content")
    return v if isinstance(v, str) else None


class Tokenizer:
    """A ``tokenizers.Tokenizer`` with the ids JanusFlow needs. Picklable (data workers)."""

    def __init__(self, hf, bos_token: str = BOS_TOKEN, eos_token: str = EOS_TOKEN,
                 pad_token: str = PAD_TOKEN):
        self.hf = hf
        missing = [t for t in JANUS_TAGS if hf.token_to_id(t) is None]
        if missing:
            # Same fallback as the official VLChatProcessor: append the tags as special tokens.
            hf.add_special_tokens(missing)
        self._ids = {}
        for name, tok in (("bos", bos_token), ("eos", eos_token), ("pad", pad_token)):
            i = hf.token_to_id(tok) if tok else None
            if i is None and name == "pad":
                i = hf.token_to_id(eos_token)       # official pad_id fallback
            if i is None:
                raise ValueError(f"tokenizer has no {name} token {tok!r}")
            self._ids[name] = i
        for name, tok in (("image_placeholder", IMAGE_PLACEHOLDER), ("image_start", IMAGE_START),
                          ("image_end", IMAGE_END), ("generation_tag", GENERATION_TAG)):
            self._ids[name] = hf.token_to_id(tok)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_file(cls, path: str) -> "Tokenizer":
        """A ``tokenizer.json``; bos/eos/pad names come from a ``tokenizer_config.json`` or
        ``special_tokens_map.json`` beside it when present, else the DeepSeek names."""
        from tokenizers import Tokenizer as HFTokenizer
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no tokenizer file {path!r}")
        names = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN}
        folder = os.path.dirname(os.path.abspath(path))
        for side in ("special_tokens_map.json", "tokenizer_config.json"):
            f = os.path.join(folder, side)
            if os.path.isfile(f):
                conf = read_json_object(f)
                for k in ("bos_token", "eos_token", "pad_token"):
                    if _token_name(conf.get(k)):
                        names[k] = _token_name(conf[k])
        try:
            hf = HFTokenizer.from_file(path)
        except Exception as e:         # the Rust binding raises a bare Exception
            raise ValueError(f"{path}: not a readable tokenizer.json ({e})") from None
        return cls(hf, **names)

    @classmethod
    def from_checkpoint_dir(cls, directory: str) -> "Tokenizer":
        path = os.path.join(directory, "tokenizer.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{directory!r} has no tokenizer.json (the checkpoint's tokenizer)")
        return cls.from_file(path)

    @classmethod
    def load(cls, path: str) -> "Tokenizer":
        """A ``tokenizer.json`` file or a directory holding one."""
        return cls.from_checkpoint_dir(path) if os.path.isdir(path) else cls.from_file(path)

    def save(self, path: str) -> None:
        self.hf.save(path)

    def files(self) -> dict:
        """``{file name: text}`` that :meth:`load` of their directory reads back to this
        tokenizer: ``tokenizer.json`` and a ``tokenizer_config.json`` naming bos/eos/pad."""
        names = {k: self.hf.id_to_token(i) for k, i in (("bos_token", self.bos_id), ("eos_token", self.eos_id),
                                                        ("pad_token", self.pad_id))}
        return {"tokenizer.json": self.hf.to_str(), "tokenizer_config.json": json.dumps(names, indent=2)}

    def __getstate__(self):
        return {"json": self.hf.to_str(), "ids": self._ids}

    def __setstate__(self, state):
        from tokenizers import Tokenizer as HFTokenizer
        self.hf = HFTokenizer.from_str(state["json"])
        self._ids = state["ids"]

    # ------------------------------------------------------------------ ids
    @property
    def bos_id(self) -> int:
        return self._ids["bos"]

    @property
    def eos_id(self) -> int:
        return self._ids["eos"]

    @property
    def pad_id(self) -> int:
        return self._ids["pad"]

    @property
    def image_start_id(self) -> int:
        return self._ids["image_start"]

    @property
    def image_end_id(self) -> int:
        return self._ids["image_end"]

    @property
    def image_placeholder_id(self) -> int:
        return self._ids["image_placeholder"]

    @property
    def generation_tag_id(self) -> int:
        return self._ids["generation_tag"]

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Special tokens written in ``text`` become their ids; the tokenizer's own post-processor
        (which may add BOS) is bypassed so BOS appears exactly once, iff ``add_bos``."""
        ids = self.hf.encode(text, add_special_tokens=False).ids
        return [self.bos_id] + ids if add_bos else ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)


# ---------------------------------------------------------------------- templates
def generation_prompt_ids(tok: Tokenizer, prompt: str, head) -> list[int]:
    """The generation prompt of the family of ``head`` (``ModelConfig.head``): ``BOS U: {prompt}
    \\n\\nA:``, and for a head whose ``prompt_image_start`` is set (Janus-Pro) the
    ``<begin_of_image>`` the official script appends. JanusFlow's model puts t_emb in that slot
    (``generate_velocity``), so its ids stop at ``A:``. Training and sampling both build
    their prompts here."""
    user, assistant = head.roles
    ids = tok.encode(f"{user}: {prompt.strip()}{SEP}{assistant}:")
    return ids + [tok.image_start_id] if head.prompt_image_start else ids


def conversation_example(tok: Tokenizer, turns: Sequence[tuple[str, str]], num_image_tokens: int,
                         system_prompt: str = "", *, roles: tuple):
    """Understanding sequence of one image and one or more (question, answer) turns between the
    speakers ``roles`` (``ModelConfig.head.roles``: the family's user and assistant names).

    Returns numpy ``(ids int32, image_mask bool, loss_mask bool)``: ``image_mask`` marks the
    ``<begin_of_image>`` slot and the ``num_image_tokens`` placeholders (1 + N positions, the
    slots ``JanusFlow.understanding_embeds`` overwrites); ``loss_mask`` marks every answer token
    and the ``<eos>`` closing it (the tokens the model must predict).
    """
    if not turns:
        raise ValueError("conversation_example needs at least one (question, answer) turn")
    if num_image_tokens < 1:
        raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}")
    pieces: list[tuple[list[int], int, int]] = []      # (ids, image flag, loss flag)

    def add(ids, image=0, loss=0):
        pieces.append((list(ids), image, loss))

    user, assistant = roles
    head = f"{system_prompt.strip()}{SEP}" if system_prompt.strip() else ""
    add([tok.bos_id] + tok.encode(f"{head}{user}: ", add_bos=False))
    add([tok.image_start_id] + [tok.image_placeholder_id] * num_image_tokens, image=1)
    add([tok.image_end_id])
    for k, (question, answer) in enumerate(turns):
        q = question.strip()
        if k == 0:
            asked = (f"\n{q}" if q else "") + f"{SEP}{assistant}:"
        else:
            asked = f"{user}: {q}{SEP}{assistant}:"
        add(tok.encode(asked, add_bos=False))
        add(tok.encode(f" {answer.strip()}", add_bos=False) + [tok.eos_id], loss=1)
    ids = np.concatenate([np.asarray(p, np.int32) for p, _, _ in pieces])
    image_mask = np.concatenate([np.full(len(p), f, bool) for p, f, _ in pieces])
    loss_mask = np.concatenate([np.full(len(p), f, bool) for p, _, f in pieces])
    return ids, image_mask, loss_mask


def understanding_example(tok: Tokenizer, question: str, answer: str, num_image_tokens: int,
                          system_prompt: str = "", *, roles: tuple):
    """``BOS U: <begin_of_image> [N placeholders] <end_of_image>\\n{question}\\n\\nA:
    {answer}<eos>`` (spec section 2); see :func:`conversation_example` for the masks."""
    return conversation_example(tok, [(question, answer)], num_image_tokens, system_prompt, roles=roles)


# ---------------------------------------------------------------------- tiny tokenizer
def build_tiny_tokenizer(texts: Iterable[str], vocab_size: int, path: Optional[str] = None) -> Tokenizer:
    """Train a byte-level BPE tokenizer locally (no download) with the JanusFlow special tokens
    at ids 0..6 (``SPECIAL_TOKENS`` order). ``vocab_size`` counts them; byte-level BPE needs
    256 + 7 base entries, so it must be >= 263. Deterministic for the same ``texts``."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers
    base = 256 + len(SPECIAL_TOKENS)
    if vocab_size < base:
        raise ValueError(f"vocab_size {vocab_size} < {base} (256 byte symbols + {len(SPECIAL_TOKENS)} specials)")
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    hf.train_from_iterator(list(texts), trainer)
    if hf.get_vocab_size(with_added_tokens=True) > vocab_size:
        raise ValueError(f"trained vocab {hf.get_vocab_size(with_added_tokens=True)} exceeds {vocab_size}")
    tok = Tokenizer(hf)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tok.save(path)
    return tok
