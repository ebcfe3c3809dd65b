"""Tokenizer + chat templates: exact token layouts of spec section 2 and the official code."""

import json
import pickle

import numpy as np
import pytest

from janusflow.configs.variants import AUTOREGRESSIVE, RECTIFIED_FLOW
from janusflow.data import tokenizer as T
from janusflow.data.pipeline import shapes_tokenizer

JF = RECTIFIED_FLOW.roles


@pytest.fixture(scope="module")
def tok():
    return shapes_tokenizer(512)


def official_sft_prompt(messages, system=""):
    """Reference: the official "DeepSeek" separator style (``janus/utils/conversation.py``
    ``get_prompt``, ``sep="\\n\\n"``, ``sep2=<eos>``) on (speaker, message) pairs, stripped as
    ``apply_sft_template_for_multi_turn_prompts`` strips it."""
    seps = ["\n\n", T.EOS_TOKEN]
    ret = f"{system}{seps[0]}" if system else ""
    for i, (role, message) in enumerate(messages):
        ret += f"{role}: {message}{seps[i % 2]}" if message else f"{role}:"
    return ret.strip()


def official_understanding_ids(tok, question, answer, n, roles=RECTIFIED_FLOW.roles):
    """Reference: the official processor's procedure -- encode the whole sft string with one
    <image_placeholder>, then replace it by <begin_of_image> + n placeholders + <end_of_image>."""
    text = official_sft_prompt([(roles[0], f"{T.IMAGE_PLACEHOLDER}\n{question}"), (roles[1], answer)])
    out = []
    for i in tok.encode(text):
        if i == tok.image_placeholder_id:
            out += [tok.image_start_id] + [tok.image_placeholder_id] * n + [tok.image_end_id]
        else:
            out.append(i)
    return out


def test_tiny_tokenizer_fits_vocab_and_is_deterministic(tok, tmp_path):
    assert tok.vocab_size <= 512
    assert [tok.hf.token_to_id(t) for t in T.SPECIAL_TOKENS] == list(range(7))
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2)
    again = T.build_tiny_tokenizer(["a photo of a red circle"] * 3, 300)
    same = T.build_tiny_tokenizer(["a photo of a red circle"] * 3, 300)
    assert again.hf.to_str() == same.hf.to_str()
    (tmp_path / "ckpt").mkdir()
    tok.save(str(tmp_path / "ckpt" / "tokenizer.json"))
    loaded = T.Tokenizer.from_checkpoint_dir(str(tmp_path / "ckpt"))
    text = "User: What color is the star?\n\nAssistant: red"
    assert loaded.encode(text) == tok.encode(text)
    assert pickle.loads(pickle.dumps(tok)).encode(text) == tok.encode(text)
    with pytest.raises(ValueError, match="vocab_size"):
        T.build_tiny_tokenizer(["x"], 100)


def test_encode_decode_roundtrip_and_bos(tok):
    text = "a photo of a blue square left of a green circle"
    ids = tok.encode(text)
    assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1
    assert tok.encode(text, add_bos=False) == ids[1:]
    assert tok.decode(ids) == text
    assert tok.decode(tok.encode(f"x{T.IMAGE_START}y", add_bos=False), skip_special_tokens=False) == f"x{T.IMAGE_START}y"


def test_generation_prompt_has_no_image_tag(tok):
    ids = T.generation_prompt_ids(tok, "  a photo of a red circle ", RECTIFIED_FLOW)
    assert ids == tok.encode("User: a photo of a red circle\n\nAssistant:")
    assert ids[0] == tok.bos_id
    for tag in (tok.image_start_id, tok.image_end_id, tok.generation_tag_id, tok.image_placeholder_id,
                tok.eos_id, tok.pad_id):
        assert tag not in ids
    assert tok.decode(ids) == "User: a photo of a red circle\n\nAssistant:"


@pytest.mark.parametrize("n", [4, 64])
def test_understanding_layout_matches_spec_and_official(tok, n):
    q, a = "What color is the star?", "yellow"
    ids, image_mask, loss_mask = T.understanding_example(tok, q, a, n, roles=JF)
    assert ids.dtype == np.int32 and image_mask.dtype == bool and loss_mask.dtype == bool
    assert ids.tolist() == official_understanding_ids(tok, q, a, n)
    # BOS "User: " <begin_of_image> N x placeholder <end_of_image> ...
    start = int(np.argmax(ids == tok.image_start_id))
    assert ids[0] == tok.bos_id and tok.decode(ids[1:start]) == "User: "
    assert np.flatnonzero(image_mask).tolist() == list(range(start, start + 1 + n))
    assert (ids[start + 1:start + 1 + n] == tok.image_placeholder_id).all()
    assert ids[start + 1 + n] == tok.image_end_id
    # loss exactly on " yellow" + <eos>, which close the sequence
    lm = np.flatnonzero(loss_mask)
    assert lm.tolist() == list(range(lm[0], len(ids))) and ids[-1] == tok.eos_id
    assert tok.decode(ids[loss_mask]) == " yellow"
    assert tok.decode(ids[start + n + 2:lm[0]]) == f"\n{q}\n\nAssistant:"


def test_multi_turn_and_system_prompt(tok):
    turns = [("How many stars are there?", "2"), ("What shape is the red object?", "circle")]
    ids, image_mask, loss_mask = T.conversation_example(tok, turns, 4, system_prompt="Be brief.", roles=JF)
    text = tok.decode(ids, skip_special_tokens=False)
    img = T.IMAGE_START + T.IMAGE_PLACEHOLDER * 4 + T.IMAGE_END
    assert text == (f"{T.BOS_TOKEN}Be brief.\n\nUser: {img}\nHow many stars are there?\n\nAssistant: 2"
                    f"{T.EOS_TOKEN}User: What shape is the red object?\n\nAssistant: circle{T.EOS_TOKEN}")
    assert image_mask.sum() == 5
    spans = np.split(np.flatnonzero(loss_mask), np.flatnonzero(np.diff(np.flatnonzero(loss_mask)) > 1) + 1)
    assert [tok.decode(ids[s]) for s in spans] == [" 2", " circle"]
    assert all(ids[s[-1]] == tok.eos_id for s in spans)
    with pytest.raises(ValueError):
        T.conversation_example(tok, [], 4, roles=JF)


@pytest.fixture(scope="module")
def pro_tok():
    """A tokenizer holding Janus-Pro's speaker names as added tokens, as its released one does
    (DeepSeek's tokenizer ships ``<|User|>`` and ``<|Assistant|>`` among its added tokens)."""
    tok = shapes_tokenizer(512, AUTOREGRESSIVE.roles)
    hf = T.Tokenizer(tok.hf.__class__.from_str(tok.hf.to_str())).hf
    hf.add_special_tokens(list(AUTOREGRESSIVE.roles))
    return T.Tokenizer(hf)


@pytest.mark.parametrize("which", ["tiny", "added_tokens"])
def test_janus_pro_generation_prompt_is_the_official_sequence(tok, pro_tok, which):
    """Janus-Pro's README and demo: speakers ``<|User|>``/``<|Assistant|>``, the sft prompt
    then ``<begin_of_image>`` (the first image token is predicted after it)."""
    t = pro_tok if which == "added_tokens" else shapes_tokenizer(512, AUTOREGRESSIVE.roles)
    ids = T.generation_prompt_ids(t, "  a photo of a red circle ", AUTOREGRESSIVE)
    official = official_sft_prompt([("<|User|>", "a photo of a red circle"), ("<|Assistant|>", "")])
    assert official == "<|User|>: a photo of a red circle\n\n<|Assistant|>:"
    assert ids == t.encode(official + T.IMAGE_START)
    assert ids[0] == t.bos_id and ids[-1] == t.image_start_id and ids.count(t.image_start_id) == 1
    if which == "added_tokens":
        assert ids[1] == t.hf.token_to_id("<|User|>") and t.hf.token_to_id("<|Assistant|>") in ids
    # JanusFlow's differs: its own speakers and no tag
    assert T.generation_prompt_ids(tok, "a photo of a red circle", RECTIFIED_FLOW) == tok.encode(
        official_sft_prompt([("User", "a photo of a red circle"), ("Assistant", "")]))


@pytest.mark.parametrize("n", [4, 16])
def test_janus_pro_understanding_is_the_official_sequence(pro_tok, n):
    q, a = "What color is the star?", "yellow"
    ids, image_mask, loss_mask = T.understanding_example(pro_tok, q, a, n, roles=AUTOREGRESSIVE.roles)
    assert ids.tolist() == official_understanding_ids(pro_tok, q, a, n, AUTOREGRESSIVE.roles)
    assert ids[1] == pro_tok.hf.token_to_id("<|User|>")
    assert pro_tok.decode(ids[loss_mask]) == " yellow" and image_mask.sum() == 1 + n
    # the prompt up to the answer (what chat feeds the model) ends in the assistant's name
    cut = int(np.argmax(loss_mask))
    assert pro_tok.decode(ids[:cut], skip_special_tokens=False).endswith(f"\n{q}\n\n<|Assistant|>:")


def test_shapes_tokenizer_learns_the_family_speakers():
    """The tiny Janus-Pro tokenizer is trained on its own template (the JanusFlow one is the
    default, so the JanusFlow shapes runs keep their tokenizer)."""
    jf, pro = shapes_tokenizer(512), shapes_tokenizer(512, AUTOREGRESSIVE.roles)
    assert shapes_tokenizer(512, RECTIFIED_FLOW.roles).hf.to_str() == jf.hf.to_str()
    text = "<|User|>: a photo of a red circle\n\n<|Assistant|>:"
    assert len(pro.encode(text)) < len(jf.encode(text))


def test_checkpoint_tokenizer_without_janus_tags_gets_them_in_official_order(tmp_path):
    from tokenizers import Tokenizer as HF, models, pre_tokenizers
    vocab = {"<s>": 0, "</s>": 1, "hello": 2, "[UNK]": 3}
    hf = HF(models.WordLevel(vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.add_special_tokens(["<s>", "</s>"])
    d = tmp_path / "ckpt"
    d.mkdir()
    hf.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": {"content": "<s>"}, "eos_token": "</s>"}))
    tok = T.Tokenizer.from_checkpoint_dir(str(d))
    assert (tok.bos_id, tok.eos_id) == (0, 1)
    assert tok.pad_id == tok.eos_id                     # no pad token: official fallback to eos
    assert [tok.image_placeholder_id, tok.generation_tag_id, tok.image_start_id, tok.image_end_id] == [4, 5, 6, 7]
    assert tok.encode("hello") == [0, 2]
    with pytest.raises(FileNotFoundError):
        T.Tokenizer.from_checkpoint_dir(str(tmp_path))


def test_files_reload_to_the_same_tokenizer_with_its_own_token_names(tmp_path):
    """``Tokenizer.files`` (what a saved model carries) keeps non-default bos/eos/pad names:
    reloaded from those files, every id is the same."""
    from tokenizers import Tokenizer as HF, models, pre_tokenizers
    hf = HF(models.WordLevel({"<s>": 0, "</s>": 1, "<pad>": 2, "hello": 3, "[UNK]": 4}, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.add_special_tokens(["<s>", "</s>", "<pad>"])
    tok = T.Tokenizer(hf, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    d = tmp_path / "model"
    d.mkdir()
    for name, body in tok.files().items():
        (d / name).write_text(body)
    again = T.Tokenizer.load(str(d))
    assert (again.bos_id, again.eos_id, again.pad_id) == (0, 1, 2)   # pad would fall back to eos (1) if lost
    assert again.encode("hello") == tok.encode("hello") == [0, 3]
    assert again.generation_tag_id == tok.generation_tag_id
