"""Janus-Pro: the model family on tiny configs, the released sizes' parameter counts, and fp32
parity with the official PyTorch modules from committed fixtures (official layout, seeded
weights and outputs made by ``tests/fixtures/make_janus_pro_fixtures.py``; neither the official
repository nor torch is needed here)."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from janusflow.checkpoint import hf, model_io
from janusflow.checkpoint.janus_pro_keys import CODEBOOK_USED
from janusflow.checkpoint.torch_layout import flat_params
from janusflow.configs import presets
from janusflow.configs.errors import ConfigError
from janusflow.models.build import build_model
from janusflow.perf.info import JANUS_PRO_NAMES, param_counts
from janusflow.sample.ar_generate import uncached_guided_logits

FIX = os.path.join(os.path.dirname(__file__), "fixtures")
TINY_DIR = os.path.join(FIX, "janus_pro_tiny")
RTOL = 1e-4


def rel_err(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def official():
    model, cfg = model_io.load_model(TINY_DIR)
    return model, cfg, dict(np.load(os.path.join(FIX, "janus_pro_tiny_outputs.npz")))


# --------------------------------------------------------------------------- family on tiny sizes
def test_tiny_family_builds_and_runs():
    cfg = presets.tiny_janus_pro()
    m = build_model(cfg)
    for path, var in nnx.to_flat_state(nnx.state(m, nnx.Param)):
        axes = var.get_metadata().get("axes")
        assert axes is not None and len(axes) == var[...].ndim, path
    images = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3), minval=-1, maxval=1)
    codes, zq = m.gen_vision.encode(images)
    assert codes.shape == (2, cfg.num_gen_tokens) and codes.dtype == jnp.int32
    assert int(codes.min()) >= 0 and int(codes.max()) < cfg.vq.codebook_size
    # l2-normalised codebook: the quantised latents are unit vectors equal to the looked-up entries
    np.testing.assert_allclose(np.linalg.norm(np.asarray(zq), axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(zq).reshape(2, -1, cfg.vq.embed_dim),
                               np.asarray(m.gen_vision.quantize.lookup(codes)), atol=1e-6)
    assert m.gen_vision.decode_codes(codes).shape == images.shape
    logits = m.image_logits(m.language_model(m.gen_image_embeds(codes)).hidden)
    assert logits.shape == (2, cfg.num_gen_tokens, cfg.vq.codebook_size) and logits.dtype == jnp.float32


def test_family_is_one_config_field():
    # the family is the generation head's (configs/variants.py): model.gen_head is the field
    with pytest.raises(ConfigError, match="gen_head"):
        presets.tiny(gen_head="autoregressive_typo")
    with pytest.raises(ConfigError, match="REPA"):
        presets.tiny_janus_pro(repa=True)
    assert type(build_model(presets.tiny_janus_pro(), abstract=True)).__name__ == "JanusPro"
    assert type(build_model(presets.tiny(), abstract=True)).__name__ == "JanusFlow"


@pytest.mark.parametrize("preset", ["janus_pro_1b", "janus_pro_7b"])
def test_official_parameter_counts(preset):
    """Counts of the official modules built at the released sizes (the fixture script builds
    them; eval_shape only here)."""
    want = json.load(open(os.path.join(FIX, "janus_pro_official_counts.json")))[preset]
    got = param_counts(getattr(presets, preset)())
    for ours, official in JANUS_PRO_NAMES.items():
        assert got[ours] == want[official.split(" ")[0]], ours
    assert got["und_encoder.attn_pool"] == want["vision_model.attn_pool"]
    assert got["checkpoint_total"] == want["total"]


@pytest.mark.parametrize("preset", ["janus_pro_1b", "janus_pro_7b"])
def test_info_cli_prints_the_official_counts(preset, capsys):
    """``janusflow info --config janus_pro_*``: each component's line carries the official
    module's name and the official module's parameter count."""
    from janusflow.cli import main as cli
    want = json.load(open(os.path.join(FIX, "janus_pro_official_counts.json")))[preset]
    assert cli.main(["info", "--config", preset]) == 0
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[-1].replace(",", "").isdigit():
            rows[parts[0]] = (parts[1], int(parts[-1].replace(",", "")))
    for ours, official in JANUS_PRO_NAMES.items():
        name = official.split(" ")[0]
        assert rows[ours] == (name, want[name]), ours
    assert rows["checkpoint"][1] == want["total"]


# ------------------------------------------------------------------------ parity (official code)
def test_config_json_recognised(official):
    _, cfg, _ = official
    assert cfg.family == "janus_pro" and cfg.llm.num_layers == 2 and cfg.vq.codebook_size == 64
    assert cfg.vq.channel_mult == (1, 1, 1) and cfg.num_gen_tokens == 64


def test_understanding_logits_parity(official):
    m, _, ref = official
    logits = m.understanding_logits(jnp.asarray(ref["und_ids"]), None, jnp.asarray(ref["und_image_mask"]),
                                    und_pixels=jnp.asarray(ref["und_pixels"]))
    err = rel_err(logits, ref["und_logits"])
    print(f"understanding logits rel err {err:.2e}")
    assert err < RTOL


def test_cfg_image_token_logits_parity(official):
    m, _, ref = official
    got = uncached_guided_logits(m, ref["cfg_tokens"], ref["cfg_fed"], float(ref["cfg_weight"]),
                           ref["cfg_logits"].shape[1])
    err = rel_err(got, ref["cfg_logits"])
    print(f"CFG image-token logits rel err {err:.2e}")
    assert err < RTOL


def test_vq_decode_parity(official):
    m, _, ref = official
    err = rel_err(m.gen_vision.decode_codes(jnp.asarray(ref["dec_codes"])), ref["dec_images"])
    print(f"VQ decode rel err {err:.2e}")
    assert err < RTOL


def test_vq_encode_parity(official):
    m, _, ref = official
    codes, zq = m.gen_vision.encode(jnp.asarray(ref["enc_images"]))
    np.testing.assert_array_equal(np.asarray(codes), ref["enc_codes"])
    err = rel_err(zq, ref["enc_quant"])
    print(f"VQ encode (codes equal) quantized latents rel err {err:.2e}")
    assert err < RTOL


# ------------------------------------------------------------------------------- conversion
def test_official_round_trip_is_bit_identical(official, tmp_path):
    """official files -> ours -> official layout: every tensor bit for bit, the same key set as
    the official modules' state dict (so the official classes load the export strictly)."""
    m, cfg, _ = official
    hf.export_janusflow_hf(m, cfg, str(tmp_path / "out"))
    src = load_file(os.path.join(TINY_DIR, "model.safetensors"))
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(out) == set(src)
    for k, v in src.items():
        assert out[k].dtype == v.dtype and out[k].shape == v.shape, k
        if k != CODEBOOK_USED:         # a usage counter (zeros in the release's untrained fixture too)
            assert out[k].tobytes() == v.tobytes(), k
    m2, cfg2 = model_io.load_model(str(tmp_path / "out"))
    assert cfg2 == cfg
    a, b = flat_params(m), flat_params(m2)
    assert all(np.asarray(a[k].get_value()).tobytes() == np.asarray(b[k].get_value()).tobytes() for k in a)


def test_missing_and_misshaped_keys_are_named(tmp_path):
    d = tmp_path / "bad"
    shutil.copytree(TINY_DIR, d)
    sd = load_file(str(d / "model.safetensors"))
    del sd["gen_head.vision_head.bias"]
    sd["gen_embed.weight"] = np.zeros((65, 8), np.float32)
    from safetensors.numpy import save_file
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(Exception) as e:
        model_io.load_model(str(d))
    assert "gen_head.vision_head.bias" in str(e.value) and "gen_embed.weight" in str(e.value)


def test_bad_config_names_the_field(tmp_path):
    d = tmp_path / "badcfg"
    shutil.copytree(TINY_DIR, d)
    c = json.load(open(d / "config.json"))
    c["gen_head_config"]["params"]["n_embed"] = 65
    json.dump(c, open(d / "config.json", "w"))
    with pytest.raises(ConfigError, match="gen_head_config.params.n_embed"):
        model_io.load_model(str(d))


def test_convert_cli_both_ways(tmp_path):
    """``janusflow convert`` recognises the Janus-Pro directory by its config, both ways."""
    from janusflow.cli import main as cli
    native, back = str(tmp_path / "native"), str(tmp_path / "back")
    assert cli.main(["convert", "--from-hf", TINY_DIR, "--out", native]) == 0
    assert model_io.load_config(native).family == "janus_pro"
    assert cli.main(["convert", "--to-hf", native, "--out", back]) == 0
    src, out = load_file(os.path.join(TINY_DIR, "model.safetensors")), load_file(os.path.join(back, "model.safetensors"))
    assert set(src) == set(out)
    assert all(out[k].tobytes() == src[k].tobytes() for k in src)


# ------------------------------------------------------------------------------- AR sampling
def test_uncond_rows_are_the_official_ones(official):
    from janusflow.sample.ar_generate import uncond_prompt_ids
    _, _, ref = official
    cond = jnp.asarray(ref["cfg_tokens"][0::2])
    got = uncond_prompt_ids(cond, jnp.ones(cond.shape, bool), 3)       # the fixture's pad id
    np.testing.assert_array_equal(np.asarray(got), ref["cfg_tokens"][1::2])
    # left padding (bucketed batches) stays padding; BOS is the first real token
    ids = jnp.asarray([[0, 0, 5, 6, 7, 8]]); mask = ids > 0
    np.testing.assert_array_equal(np.asarray(uncond_prompt_ids(ids, mask, 9)), [[0, 0, 5, 9, 9, 8]])


def test_ar_sampler_cached_loop_matches_teacher_forced_reference(official):
    """Every token the compiled, KV-cached loop picks is the one its seeded key picks from the
    guided logits of a single uncached forward over [prompt, the codes so far] (the official
    sequence, unconditional rows attending to their pads)."""
    from janusflow.sample.ar_generate import generate_ar, image_keys, uncond_prompt_ids
    m, cfg, ref = official
    prompt = [int(t) for t in ref["cfg_tokens"][0]]
    w, temp, pad = 5.0, 1.0, 3
    codes = generate_ar(m, cfg, [prompt], seed=7, cfg_weight=w, temperature=temp, pad_id=pad,
                        return_codes=True, num_samples=2)
    assert codes.shape == (2, cfg.num_gen_tokens)
    ids = jnp.asarray([prompt] * 2)
    rows = jnp.stack([ids, uncond_prompt_ids(ids, jnp.ones(ids.shape, bool), pad)], 1).reshape(4, -1)
    seq = jnp.concatenate([m.language_model.embed(rows),
                           m.gen_image_embeds(jnp.repeat(jnp.asarray(codes[:, :-1]), 2, axis=0))], 1)
    logits = m.image_logits(m.language_model(seq).hidden[:, len(prompt) - 1:]).reshape(2, 2, cfg.num_gen_tokens, -1)
    guided = logits[:, 1] + w * (logits[:, 0] - logits[:, 1])
    keys = image_keys(7, [0, 1])
    for i in range(cfg.num_gen_tokens):
        want = [int(jax.random.categorical(jax.random.fold_in(keys[r], i), guided[r, i] / temp)) for r in range(2)]
        assert list(codes[:, i]) == want, i
    assert len(set(map(tuple, codes))) == 2          # two samples of one prompt differ


def test_ar_sampler_seeded_and_batch_independent(official):
    from janusflow.sample.ar_generate import generate_ar
    m, cfg, ref = official
    a = [int(t) for t in ref["cfg_tokens"][0]]
    b = a[:3] + a[-1:]                                   # a shorter prompt: left-padded in a batch
    both = generate_ar(m, cfg, [a, b], seed=1, pad_id=3, return_codes=True)
    again = generate_ar(m, cfg, [a, b], seed=1, pad_id=3, return_codes=True, batch_size=1)
    np.testing.assert_array_equal(both, again)
    images = generate_ar(m, cfg, [b], seed=1, pad_id=3, key_ids=[1])
    assert images.shape == (1, 32, 32, 3) and images.dtype == np.uint8


def test_ar_sampler_samples_a_scanned_model_per_layer_with_the_same_codes():
    """#26: the token loop runs on per-layer weights (under lax.scan XLA:CPU copied each layer's
    weights out of the stack on every token). A scanned model is relaid out, not changed: the
    codes equal those of the stacked program on the same padded prompts and keys."""
    from janusflow.perf.bench_sample import random_model
    from janusflow.sample.ar_generate import generate_ar, image_keys, sample_codes
    from janusflow.sample.layout import per_layer_model
    from janusflow.sample.generate import bucket_len, pad_prompts
    cfg = presets.tiny_janus_pro(scan_layers=True)
    m = random_model(cfg, std=0.3)                     # peaked logits: the codes depend on the weights
    prompt = [1, 5, 6, 7, 9]
    ids, mask = pad_prompts([prompt] * 2, bucket_len(len(prompt), 10 ** 6), 0)
    graphdef, state = nnx.split(m)
    stacked = sample_codes(graphdef, state, jnp.asarray(ids), jnp.asarray(mask), image_keys(4, [0, 1]),
                           jnp.float32(5.0), jnp.float32(1.0), jnp.int32(0), num_tokens=cfg.num_gen_tokens)
    got = generate_ar(m, cfg, [prompt], num_samples=2, seed=4, return_codes=True)
    np.testing.assert_array_equal(got, np.asarray(stacked))
    per, per_cfg = per_layer_model(m, cfg)
    assert not per.language_model.scan and not per_cfg.scan_layers and m.language_model.scan
    assert per_layer_model(per, per_cfg)[0] is per


def test_sample_cli_with_a_janus_pro_checkpoint(official, tmp_path):
    """``janusflow sample`` takes the family from the checkpoint (no VAE); a rerun samples
    nothing; the images are the seeded sampler's."""
    from janusflow.cli import main as cli
    from janusflow.data.preprocess import decode_image, read_image_file
    from janusflow.sample.ar_generate import generate_ar
    m, cfg, ref = official
    prompt = ",".join(str(int(t)) for t in ref["cfg_tokens"][0])
    out = str(tmp_path / "samples")
    args = ["sample", "--checkpoint", TINY_DIR, "--prompt-ids", prompt, "--out", out, "--n", "2",
            "--seed", "3", "--no-progress"]
    assert cli.main(args) == 0
    assert sorted(f for f in os.listdir(out) if f.endswith(".png")) == ["00000_00.png", "00000_01.png", "grid.png"]
    want = generate_ar(m, cfg, [[int(t) for t in ref["cfg_tokens"][0]]], num_samples=2, seed=3)
    np.testing.assert_array_equal(decode_image(read_image_file(os.path.join(out, "00000_01.png"))), want[1])
    settings = json.load(open(os.path.join(out, "sample_config.json")))
    assert settings["family"] == "janus_pro" and settings["cfg_weight"] == 5.0 and settings["temperature"] == 1.0
    assert cli.main(args) == 0                                   # everything already there


def test_chat_answers_with_a_janus_pro_model(official):
    """``answer`` (what ``janusflow chat`` runs) on a Janus-Pro model: <begin_of_image> stays a
    text token, the N placeholders take the image; greedy tokens equal the argmax of the
    uncached understanding logits of the same sequence."""
    from janusflow.sample.chat import UnderstandingTemplate, answer, siglip_pixels
    m, cfg, ref = official
    t = UnderstandingTemplate(bos=1, eos=2, begin_of_image=10, image=11, end_of_image=12,
                              before_image=(20, 21), after_image=(22,), after_question=(23, 24))
    image = np.asarray(ref["enc_images"][0] * 0.5 + 0.5, np.float32)     # [0, 1], 32 x 32
    q = [30, 31, 32]
    got = answer(m, cfg, None, [image], [q], template=t, max_new_tokens=4)[0]
    assert len(got) > 0          # (an immediate EOS would leave nothing to compare)
    ids, slots = t.build(q, cfg.num_und_tokens)
    n = cfg.num_und_tokens
    mask = np.asarray(slots) & (np.cumsum(slots) > 1)
    assert mask.sum() == n and ids[int(np.argmax(slots))] == 10
    pixels = jnp.asarray(siglip_pixels([image], cfg))
    seq = list(ids)
    for tok in got:
        logits = m.understanding_logits(jnp.asarray([seq]), None, jnp.asarray([list(mask) + [False] * (len(seq) - len(ids))]),
                                        und_pixels=pixels)
        assert int(jnp.argmax(logits[0, -1])) == tok
        seq.append(tok)


def test_geneval_generate_with_a_janus_pro_model(official, tmp_path):
    """``eval geneval generate`` on a Janus-Pro model: the official layout, the family's CFG
    weight (5), each image keyed by its own seed (a rerun of one image reproduces it)."""
    from janusflow.data.preprocess import decode_image, read_image_file
    from janusflow.data.tokenizer import build_tiny_tokenizer
    from janusflow.eval import geneval
    from janusflow.eval import geneval_layout as L
    from janusflow.shapes import world as S
    m, cfg, _ = official
    tok = build_tiny_tokenizer([f"<|User|>: {p['prompt']}\n\n<|Assistant|>:" for t in S.TAGS
                                for p in S.prompts_for(t)[:30]], cfg.llm.vocab_size)
    prompts = S.prompt_set("val", 1, 0)[:2]
    mfile = tmp_path / "p.jsonl"
    mfile.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    out = str(tmp_path / "gen")
    stats = geneval.run_generate("ckpt", str(mfile), out, n=2, batch_size=4,
                                 generator=(m, None, cfg, tok), progress=False)
    assert stats["generated"] == 4
    items = L.read_layout(out)
    assert len(items) == 4
    protocol = json.load(open(os.path.join(out, "protocol.json")))
    assert protocol["cfg"] == 5.0 and protocol["family"] == "janus_pro"
    path = items[0][0]
    first = decode_image(read_image_file(path))
    assert first.shape == (32, 32, 3)
    os.remove(path)                                   # resumable: only the missing image is redone
    assert geneval.run_generate("ckpt", str(mfile), out, n=2, batch_size=4,
                                generator=(m, None, cfg, tok), progress=False)["generated"] == 1
    # the same image tokens; the VQ decode of a batch of 1 may round a pixel differently from a batch of 4
    again = decode_image(read_image_file(path))
    np.testing.assert_allclose(again.astype(int), first.astype(int), atol=1)
    assert np.mean(again == first) > 0.99


@pytest.mark.skipif(jax.device_count() < 2, reason="needs 2 (simulated) devices; conftest sets XLA_FLAGS")
def test_ar_sampler_sharded_over_mesh_equals_single_device(official):
    from janusflow.configs.schema import MeshConfig
    from janusflow.parallel.mesh import make_mesh
    from janusflow.sample.ar_generate import generate_ar
    m, cfg, ref = official
    prompt = [int(t) for t in ref["cfg_tokens"][0]]
    mesh = make_mesh(MeshConfig(data=-1), devices=jax.devices()[:2])
    one = generate_ar(m, cfg, [prompt], num_samples=3, seed=5, pad_id=3, return_codes=True)
    sharded = generate_ar(m, cfg, [prompt], num_samples=3, seed=5, pad_id=3, return_codes=True, mesh=mesh)
    np.testing.assert_array_equal(one, sharded)


# --------------------------------------------------------------------------- the CLI on text
OFFICIAL_PROMPT = "<|User|>: {}\n\n<|Assistant|>:<begin_of_image>"   # Janus-Pro README / app_januspro.py


@pytest.fixture(scope="module")
def pro_ckpt(tmp_path_factory):
    """The fixture checkpoint with a tokenizer.json beside it whose added tokens include Janus-Pro's
    speakers, as DeepSeek's does: the commands read everything from the folder."""
    from janusflow.configs.variants import AUTOREGRESSIVE
    from janusflow.data.pipeline import shapes_tokenizer
    from janusflow.data.tokenizer import Tokenizer
    d = str(tmp_path_factory.mktemp("pro") / "ckpt")
    shutil.copytree(TINY_DIR, d)
    hf = shapes_tokenizer(256 + 7 + 40, AUTOREGRESSIVE.roles).hf
    hf = hf.__class__.from_str(hf.to_str())
    hf.add_special_tokens(list(AUTOREGRESSIVE.roles))
    tok = Tokenizer(hf)
    tok.save(os.path.join(d, "tokenizer.json"))
    model, cfg = model_io.load_model(d)
    return d, tok, model, cfg


def test_sample_cli_text_prompt_is_the_official_janus_pro_sequence(pro_ckpt, tmp_path):
    """``janusflow sample --prompt`` on a Janus-Pro checkpoint feeds the official sequence (its
    speakers, then <begin_of_image>): the image is the sampler's on those ids."""
    from janusflow.cli import main as cli
    from janusflow.data.preprocess import decode_image, read_image_file
    from janusflow.sample.ar_generate import generate_ar
    d, tok, m, cfg = pro_ckpt
    out = str(tmp_path / "s")
    assert cli.main(["sample", "--checkpoint", d, "--prompt", "a red circle", "--out", out, "--n", "1",
                     "--seed", "3", "--no-progress"]) == 0
    ids = tok.encode(OFFICIAL_PROMPT.format("a red circle"))
    assert ids[1] == tok.hf.token_to_id("<|User|>") and ids[-1] == tok.image_start_id
    want = generate_ar(m, cfg, [ids], num_samples=1, seed=3, pad_id=tok.pad_id)
    np.testing.assert_array_equal(decode_image(read_image_file(os.path.join(out, "00000_00.png"))), want[0])


def test_chat_cli_asks_in_the_official_janus_pro_template(pro_ckpt, tmp_path, capsys, monkeypatch):
    """``janusflow chat`` on a Janus-Pro checkpoint: the prompt the decoder receives is the
    official understanding sequence (system prompt, ``<|User|>``, the image block, the question,
    ``<|Assistant|>:``); the printed answer is the greedy continuation computed without a cache
    on those ids."""
    from PIL import Image

    from janusflow.cli import main as cli
    from janusflow.configs.data import SYSTEM_PROMPT
    from janusflow.data.tokenizer import IMAGE_PLACEHOLDER
    from janusflow.sample import chat
    from janusflow.sample.chat import load_image, siglip_pixels
    d, tok, m, cfg = pro_ckpt
    png = str(tmp_path / "img.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(png)
    q = "what colour is the circle?"
    fed, decode = [], chat._decode

    def spy(graphdef, state, ids, mask, *rest, **kw):     # the prompt rows the decoder prefills
        fed.append(np.asarray(ids)[np.asarray(mask, bool)].tolist())
        return decode(graphdef, state, ids, mask, *rest, **kw)
    monkeypatch.setattr(chat, "_decode", spy)
    assert cli.main(["chat", "--checkpoint", d, "--image", png, "--question", q, "--max-new-tokens", "5"]) == 0
    printed = capsys.readouterr().out
    # the official processor: one placeholder in the sft string, expanded to begin/N/end
    text = f"{SYSTEM_PROMPT}\n\n<|User|>: {IMAGE_PLACEHOLDER}\n{q}\n\n<|Assistant|>:"
    ids = []
    for i in tok.encode(text):
        ids += ([tok.image_start_id] + [i] * cfg.num_und_tokens + [tok.image_end_id]
                if i == tok.image_placeholder_id else [i])
    assert fed == [ids] and ids[-2] == tok.hf.token_to_id("<|Assistant|>")
    mask = [i == tok.image_placeholder_id for i in ids]
    pixels = jnp.asarray(siglip_pixels([load_image(png)], cfg))
    seq, got = list(ids), []
    for _ in range(5):
        logits = m.understanding_logits(jnp.asarray([seq]), None, jnp.asarray([mask + [False] * (len(seq) - len(ids))]),
                                        und_pixels=pixels)
        t = int(jnp.argmax(logits[0, -1]))
        if t == tok.eos_id:
            break
        got.append(t)
        seq.append(t)
    assert got, "an immediate EOS would leave nothing to compare"
    assert printed == tok.decode(got) + "\n"


def test_geneval_generate_cli_with_a_janus_pro_checkpoint(pro_ckpt, tmp_path):
    """``janusflow eval geneval generate --checkpoint`` on a Janus-Pro folder: the official
    sequence per prompt, each image keyed by its own GenEval seed."""
    from janusflow.cli import main as cli
    from janusflow.data.preprocess import decode_image, read_image_file
    from janusflow.eval import geneval_layout as L
    from janusflow.sample.ar_generate import generate_ar
    from janusflow.shapes import world as S
    d, tok, m, cfg = pro_ckpt
    prompts = S.prompt_set("val", 1, 0)[:2]
    mfile = tmp_path / "p.jsonl"
    mfile.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    out = str(tmp_path / "gen")
    assert cli.main(["eval", "geneval", "generate", "--checkpoint", d, "--metadata", str(mfile),
                     "--outdir", out, "--n", "1", "--batch-size", "2"]) == 0
    items = L.read_layout(out)
    assert len(items) == 2
    ids = [tok.encode(OFFICIAL_PROMPT.format(p["prompt"])) for p in prompts]
    want = generate_ar(m, cfg, ids, seed=0, pad_id=tok.pad_id, key_ids=[L.image_seed(0, i, 0) for i in range(2)],
                       batch_size=2)
    for (path, _), w in zip(items, want):
        np.testing.assert_array_equal(decode_image(read_image_file(path)), w)
