"""Understanding / chat: KV-cache decoding stops per row at EOS and at max tokens, top-p
filtering, seeded sampling, SigLIP preprocessing (long side + mean-colour padding), the
tokenizer template, bad inputs, and ``janusflow chat`` on a tiny checkpoint."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from janusflow.configs import presets
from janusflow.perf.bench_sample import random_model
from janusflow.cli.main import main as cli_main
from janusflow.sample.chat import (UnderstandingTemplate, _pick, answer, load_image, siglip_pixels,
                                  tokenizer_prompt)

_T = presets.tiny()
CFG = presets.tiny(llm=dataclasses.replace(_T.llm, num_layers=2), repa_layer=1)
TPL = UnderstandingTemplate(bos=1, eos=2, begin_of_image=3, image=4, end_of_image=5,
                            before_image=(6, 7), after_image=(8,))
# next-token chains the constructed model follows greedily; 2 is EOS
CHAINS = {20: 21, 21: 2, 30: 31, 31: 32, 32: 33, 33: 2}


@pytest.fixture(scope="module")
def chain_model():
    """Blocks contribute nothing (o_proj = down_proj = 0), so the last hidden state is the
    normalised embedding of the current token; chain tokens get one-hot embeddings and the LM
    head maps each to its successor with a large margin."""
    model = random_model(CFG, seed=1, std=0.05)
    # by path, so stacked (scanned) layers are zeroed alike
    for path, var in nnx.to_flat_state(nnx.state(model.language_model.layers, nnx.Param)):
        if path[-2] in ("o_proj", "down_proj"):
            var[...] = jnp.zeros_like(var[...])
    table = np.asarray(model.language_model.embed_tokens[...]).copy()
    head = np.zeros_like(np.asarray(model.language_model.lm_head.kernel[...]))
    for j, (tok, nxt) in enumerate(CHAINS.items()):
        table[tok] = 0.0
        table[tok, j] = 1.0
        head[j, nxt] = 10.0
    model.language_model.embed_tokens[...] = jnp.asarray(table)
    model.language_model.lm_head.kernel[...] = jnp.asarray(head)
    return model


def _images(n=2, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 40, 24, 3), dtype=np.uint8)


def test_stops_at_eos_per_row_and_at_max_tokens(chain_model):
    qs = [[9, 20], [9, 10, 30]]            # the question's last token starts the chain
    out = answer(chain_model, CFG, None, _images(), qs, template=TPL, max_new_tokens=8)
    assert out == [[21], [31, 32, 33]]     # row 0 stops early; row 1 continues to its own EOS
    out = answer(chain_model, CFG, None, _images(), qs, template=TPL, max_new_tokens=2)
    assert out == [[21], [31, 32]]
    # sampling at temperature 1 follows the same chains (80-logit margin)
    out = answer(chain_model, CFG, None, _images(), qs, template=TPL, max_new_tokens=8,
                 temperature=1.0, top_p=0.9, seed=3)
    assert out == [[21], [31, 32, 33]]


def test_top_p_and_temperature():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    keys = jax.random.split(jax.random.key(0), 400)

    def draws(top_p, temperature=1.0):
        f = jax.vmap(lambda k: _pick(logits, k, jnp.float32(temperature), jnp.float32(top_p), False)[0])
        return set(np.asarray(f(keys)).tolist())
    assert draws(0.4) == {0}
    assert draws(0.7) == {0, 1}
    assert draws(1.0) == {0, 1, 2, 3}
    assert int(_pick(logits, keys[0], jnp.float32(1.0), jnp.float32(1.0), True)[0]) == 0


@pytest.fixture(scope="module")
def plain_model():
    return random_model(CFG, seed=2)


def test_sampling_is_seeded(plain_model):
    qs = [[9, 11], [9, 12]]
    kw = dict(template=TPL, max_new_tokens=6, temperature=1.0)
    a = answer(plain_model, CFG, None, _images(), qs, seed=0, **kw)
    b = answer(plain_model, CFG, None, _images(), qs, seed=0, **kw)
    c = answer(plain_model, CFG, None, _images(), qs, seed=1, **kw)
    assert a == b and a != c
    assert all(len(x) == 6 for x in a)      # near-uniform logits: EOS is unlikely this early


def test_siglip_preprocessing_pads_with_mean_colour():
    white = np.full((16, 32, 3), 255, np.uint8)          # wide: padded above and below
    px = siglip_pixels([white], CFG)
    s = CFG.siglip.image_size
    assert px.shape == (1, s, s, 3)
    pad = (127 / 255 - 0.5) / 0.5                         # official int(mean * 255) fill
    np.testing.assert_allclose(px[0, :8], pad, atol=1e-6)
    np.testing.assert_allclose(px[0, 24:], pad, atol=1e-6)
    np.testing.assert_allclose(px[0, 8:24], 1.0, atol=1e-6)
    # float [0, 1] input is the same image
    np.testing.assert_allclose(siglip_pixels([white / 255.0], CFG), px, atol=1e-6)


def test_bad_inputs(chain_model, tmp_path):
    imgs, qs = _images(), [[9, 20], [9, 30]]
    with pytest.raises(ValueError, match="2 images but 1 questions"):
        answer(chain_model, CFG, None, imgs, qs[:1], template=TPL)
    with pytest.raises(ValueError, match="question 1"):
        answer(chain_model, CFG, None, imgs, [[9], []], template=TPL)
    with pytest.raises(ValueError, match="max_new_tokens"):
        answer(chain_model, CFG, None, imgs, qs, template=TPL, max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        answer(chain_model, CFG, None, imgs, qs, template=TPL, temperature=-1.0)
    with pytest.raises(ValueError, match="top_p"):
        answer(chain_model, CFG, None, imgs, qs, template=TPL, top_p=0.0)
    with pytest.raises(ValueError, match="3 RGB|\\(H, W, 3\\)"):
        answer(chain_model, CFG, None, np.zeros((2, 8, 8, 4), np.uint8), qs, template=TPL)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        answer(chain_model, CFG, None, np.full((2, 8, 8, 3), 2.0), qs, template=TPL)
    with pytest.raises(ValueError, match="exceeds the model context"):
        answer(chain_model, CFG, None, imgs, qs, template=TPL, max_new_tokens=CFG.llm.max_position_embeddings)
    with pytest.raises(ValueError, match="template"):
        answer(chain_model, CFG, None, imgs, qs)
    bad = tmp_path / "not_an_image.png"
    bad.write_text("hello")
    with pytest.raises(ValueError, match="not_an_image.png"):
        load_image(str(bad))
    with pytest.raises(ValueError, match="missing.png"):
        load_image(str(tmp_path / "missing.png"))


@pytest.fixture(scope="module")
def tokenizer():
    from janusflow.data.tokenizer import build_tiny_tokenizer
    texts = ["what colour is the circle?", "a red square above a blue circle", "yes no left right"] * 20
    return build_tiny_tokenizer(texts, vocab_size=CFG.llm.vocab_size)


def test_tokenizer_template(tokenizer):
    ids, image_mask = tokenizer_prompt(tokenizer, "what colour is the circle?", CFG)
    ids, image_mask = np.asarray(ids), np.asarray(image_mask)
    n = CFG.num_und_tokens
    assert ids[0] == tokenizer.bos_id and image_mask.sum() == 1 + n
    img = ids[image_mask]
    assert img[0] == tokenizer.image_start_id and (img[1:] == tokenizer.image_placeholder_id).all()
    assert ids[np.argmax(image_mask) + 1 + n] == tokenizer.image_end_id
    text = tokenizer.decode(ids.tolist(), skip_special_tokens=False)
    assert text.endswith("\nwhat colour is the circle?\n\nAssistant:")
    assert "User: " in text and "You are a helpful language and vision assistant" in text


def test_cli_chat(tmp_path, tokenizer, plain_model, capsys):
    from janusflow.checkpoint import model_io
    model = plain_model
    ckpt = model_io.save_model(str(tmp_path / "ckpt"), model, CFG)
    tokenizer.save(str(tmp_path / "ckpt" / "tokenizer.json"))
    img = tmp_path / "img.png"
    Image.fromarray(_images(1)[0]).save(img)
    args = ["chat", "--checkpoint", ckpt, "--image", str(img), "--question", "what colour?",
            "--max-new-tokens", "4"]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    expected = answer(model, CFG, tokenizer, [np.asarray(Image.open(img))], ["what colour?"],
                      max_new_tokens=4)[0]
    assert printed == expected + "\n"
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\x00\x01garbage")
    assert cli_main(args[:4] + [str(bad)] + args[5:]) == 1
    assert "cannot read image" in capsys.readouterr().err


def test_stream_answer_yields_each_token_and_ends_with_answer(tokenizer, plain_model):
    from janusflow.sample.chat import stream_answer
    img = _images(1)[0]
    for kw in (dict(), dict(temperature=1.0, top_p=0.9, seed=4)):
        parts = list(stream_answer(plain_model, CFG, tokenizer, img, "what colour?", max_new_tokens=6, **kw))
        full = answer(plain_model, CFG, tokenizer, [img], ["what colour?"], max_new_tokens=6, **kw)[0]
        # near-uniform logits: no EOS this early, so one yield per token, the last the whole answer
        assert len(parts) == 6 and parts[-1] == full
        assert len(set(parts)) > 1
    with pytest.raises(ValueError, match="question 0 is empty"):
        next(stream_answer(plain_model, CFG, tokenizer, img, "  "))
    with pytest.raises(ValueError, match="max_new_tokens"):
        next(stream_answer(plain_model, CFG, tokenizer, img, "what?", max_new_tokens=0))


def test_scanned_model_decodes_on_per_layer_weights_with_the_same_answer(plain_model, tokenizer, monkeypatch):
    """A scanned (stacked-layer) model is relaid out per layer before the decode loop (the
    layout token-by-token decoding is fast with, sample/layout.py) and answers exactly as the
    per-layer model does, greedy and sampled, batch and streamed."""
    from janusflow.checkpoint.model_io import relayout
    from janusflow.sample import chat
    scanned, scfg = relayout(plain_model, CFG, True)
    assert scanned.language_model.scan
    seen = []
    real = chat._decode

    def spy(graphdef, state, *a, **kw):
        seen.append(nnx.merge(graphdef, state).language_model.scan)
        return real(graphdef, state, *a, **kw)

    monkeypatch.setattr(chat, "_decode", spy)
    imgs = _images()
    for kw in ({}, {"temperature": 1.0, "top_p": 0.9, "seed": 3}):
        want = answer(plain_model, CFG, None, imgs, [[9, 20], [9, 10, 30]], template=TPL, max_new_tokens=6, **kw)
        got = answer(scanned, scfg, None, imgs, [[9, 20], [9, 10, 30]], template=TPL, max_new_tokens=6, **kw)
        assert got == want
    assert seen == [False] * 4
    img = _images(1)[0]
    want = list(chat.stream_answer(plain_model, CFG, tokenizer, img, "what colour?", max_new_tokens=5))
    assert list(chat.stream_answer(scanned, scfg, tokenizer, img, "what colour?", max_new_tokens=5)) == want
