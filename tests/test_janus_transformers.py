"""transformers' own Janus layout (``transformers.models.janus``): a tiny random
``JanusForConditionalGeneration`` saved by transformers is imported and compared in fp32 with
transformers' own outputs (understanding logits, generation-head logits, VQ decode and encode),
and exported back bit for bit. transformers and torch install from PyPI, so this runs in CI."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from janusflow.checkpoint import hf, model_io
from janusflow.checkpoint.torch_layout import CheckpointMismatch, flat_params
from janusflow.configs.errors import ConfigError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

RTOL = 1e-4
IMAGE_TOKEN = 100
N_PATCHES = 16                   # (16 px / patch 4)^2 = (16 px / VQ downsample 4)^2


def rel_err(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def tiny_config(tie=False):
    return transformers.JanusConfig(
        text_config=dict(model_type="llama", vocab_size=128, hidden_size=64, intermediate_size=96,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, rms_norm_eps=1e-6),
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=16,
                           patch_size=4, mlp_ratio=2.0, projection_dim=64),
        vq_config=dict(embed_dim=8, num_embeddings=64, latent_channels=32, base_channels=32,
                       channel_multiplier=[1, 1, 2], num_res_blocks=1, projection_dim=64,
                       image_token_embed_dim=64),
        image_token_id=IMAGE_TOKEN, tie_word_embeddings=tie)


def make_model(tie=False):
    torch.manual_seed(0)
    m = transformers.JanusForConditionalGeneration(tiny_config(tie)).eval()
    with torch.no_grad():
        # weights large enough that every layer moves the outputs (the init's 0.02 barely does)
        for name, p in m.named_parameters():
            norm = "norm" in name and name.endswith("weight")
            p.copy_(torch.randn_like(p) * (0.1 if p.ndim == 1 else 0.3) + (1.0 if norm else 0.0))
        # unit-norm codebook rows: see test_vq_encode_codes_equal
        e = m.model.vqmodel.quantize.embedding.weight
        e.copy_(e / e.norm(dim=-1, keepdim=True))
    return m


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    ref = make_model()
    d = str(tmp_path_factory.mktemp("janus_tf") / "hf")
    ref.save_pretrained(d)                     # safetensors, transformers' own key names
    model, cfg = model_io.load_model(d)
    return ref, model, cfg, d


def test_recognised_and_config_mapped(pair):
    ref, _, cfg, d = pair
    assert hf.dir_layout(d) == hf.TRANSFORMERS_JANUS
    assert cfg.family == "janus_pro" and cfg.llm.num_layers == 2 and cfg.llm.num_kv_heads == 2
    assert cfg.siglip.depth == 2 and cfg.siglip.width == 32 and not cfg.siglip.attn_pool
    assert cfg.vq.codebook_size == 64 and cfg.vq.channel_mult == (1, 1, 2) and cfg.vq.norm_groups == 32
    assert cfg.num_gen_tokens == N_PATCHES and not cfg.llm.tie_word_embeddings


def test_understanding_logits_parity(pair):
    """transformers splices the aligned SigLIP features at its ``image_token_id`` placeholders
    (masked_scatter); the official model does the same at ``images_seq_mask``: our image_mask."""
    ref, m, _, _ = pair
    ids = np.array([[1, 5, 7] + [IMAGE_TOKEN] * N_PATCHES + [9, 11, 3]])
    pix = np.random.default_rng(0).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pix)).logits.numpy()
    got = m.understanding_logits(jnp.asarray(ids), None, jnp.asarray(ids == IMAGE_TOKEN),
                                 und_pixels=jnp.asarray(pix.transpose(0, 2, 3, 1)))
    err = rel_err(got, want)
    print(f"understanding logits rel err {err:.2e}")
    assert err < RTOL


def test_generation_head_logits_parity(pair):
    """A text prompt, then image codes embedded as transformers' generate does
    (``prepare_embeddings_for_image_generation``), through the LLM and ``generation_head``."""
    ref, m, _, _ = pair
    ids = np.array([[1, 5, 7, 9, 2]])
    codes = np.array([[3, 60, 17, 42, 8, 0]])
    with torch.no_grad():
        emb = torch.cat([ref.get_input_embeddings()(torch.tensor(ids)),
                         ref.prepare_embeddings_for_image_generation(torch.tensor(codes))], 1)
        h = ref.model.language_model(inputs_embeds=emb).last_hidden_state
        want = ref.model.generation_head(h[:, ids.shape[1] - 1:]).numpy()
    seq = jnp.concatenate([m.language_model.embed(jnp.asarray(ids)), m.gen_image_embeds(jnp.asarray(codes))], 1)
    got = m.image_logits(m.language_model(seq).hidden[:, ids.shape[1] - 1:])
    err = rel_err(got, want)
    print(f"generation-head logits rel err {err:.2e}")
    assert err < RTOL


def test_vq_decode_parity(pair):
    ref, m, _, _ = pair
    codes = np.random.default_rng(1).integers(0, 64, (2, N_PATCHES))
    with torch.no_grad():
        want = ref.model.vqmodel.decode(torch.tensor(codes)).numpy().transpose(0, 2, 3, 1)
    err = rel_err(m.gen_vision.decode_codes(jnp.asarray(codes)), want)
    print(f"VQ decode rel err {err:.2e}")
    assert err < RTOL


def test_vq_encode_codes_equal(pair):
    """transformers' quantizer compares the raw latent with the raw codebook; the official VQ-16
    (and ours) compare l2-normalised ones. With unit-norm codebook rows both pick the same
    entries (argmax of the dot product); with unequal row norms transformers' codes can differ."""
    ref, m, _, _ = pair
    img = np.random.default_rng(2).uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        want = ref.model.vqmodel.encode(torch.tensor(img)).image_tokens.numpy().reshape(2, -1)
    codes, _ = m.gen_vision.encode(jnp.asarray(img.transpose(0, 2, 3, 1)))
    assert len(set(want.ravel())) > 3             # not a degenerate all-one-code image
    np.testing.assert_array_equal(np.asarray(codes), want)


def test_export_round_trip_is_bit_identical(pair, tmp_path):
    ref, m, cfg, d = pair
    out = str(tmp_path / "out")
    hf.export_janusflow_hf(m, cfg, out, layout=hf.TRANSFORMERS_JANUS)
    src, got = load_file(os.path.join(d, "model.safetensors")), load_file(os.path.join(out, "model.safetensors"))
    assert set(got) == set(src)
    assert all(got[k].dtype == src[k].dtype and got[k].tobytes() == src[k].tobytes() for k in src)
    back = transformers.JanusForConditionalGeneration.from_pretrained(out)    # transformers reads it
    assert back.config.vq_config.num_embeddings == 64
    m2, cfg2 = model_io.load_model(out)
    assert cfg2 == cfg
    a, b = flat_params(m), flat_params(m2)
    assert all(np.asarray(a[k].get_value()).tobytes() == np.asarray(b[k].get_value()).tobytes() for k in a)


def test_tied_head_imports(tmp_path):
    d = str(tmp_path / "tied")
    make_model(tie=True).save_pretrained(d)
    assert "lm_head.weight" not in load_file(os.path.join(d, "model.safetensors"))
    _, cfg = model_io.load_model(d)
    assert cfg.llm.tie_word_embeddings


def test_missing_unknown_and_partial_qkv_are_named(pair, tmp_path):
    _, _, _, d = pair
    bad = tmp_path / "bad"
    os.makedirs(bad)
    for n in ("config.json",):
        (bad / n).write_text(open(os.path.join(d, n)).read())
    sd = load_file(os.path.join(d, "model.safetensors"))
    del sd["model.generation_head.vision_head.bias"]
    del sd["model.vision_model.encoder.layers.1.self_attn.k_proj.weight"]
    sd["model.vision_model.head.probe"] = np.zeros((1, 1, 32), np.float32)
    save_file(sd, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointMismatch) as e:
        model_io.load_model(str(bad))
    msg = str(e.value)
    for k in ("model.generation_head.vision_head.bias", "model.vision_model.head.probe",
              "model.vision_model.encoder.layers.1.self_attn.q_proj.weight",   # its group is incomplete
              "layers.1.self_attn.qkv_proj.weight"):
        assert k in msg, k


def test_bad_config_names_the_field(pair, tmp_path):
    _, _, _, d = pair
    c = json.load(open(os.path.join(d, "config.json")))
    c["vq_config"]["projection_dim"] = 32
    bad = tmp_path / "badcfg"
    os.makedirs(bad)
    json.dump(c, open(bad / "config.json", "w"))
    os.link(os.path.join(d, "model.safetensors"), bad / "model.safetensors")
    with pytest.raises(ConfigError, match="vq_config.projection_dim"):
        model_io.load_model(str(bad))


def test_convert_cli_both_ways(pair, tmp_path):
    from janusflow.cli import main as cli
    _, _, _, d = pair
    native, back = str(tmp_path / "native"), str(tmp_path / "back")
    assert cli.main(["convert", "--from-hf", d, "--out", native]) == 0
    assert model_io.load_config(native).family == "janus_pro"
    assert cli.main(["convert", "--to-hf", native, "--layout", "transformers", "--out", back]) == 0
    assert json.load(open(os.path.join(back, "config.json")))["model_type"] == "janus"
    src, out = load_file(os.path.join(d, "model.safetensors")), load_file(os.path.join(back, "model.safetensors"))
    assert set(src) == set(out) and all(out[k].tobytes() == src[k].tobytes() for k in src)


def test_export_of_an_official_style_model(tmp_path):
    """A tower with the attention-pool head (official layout) exports without it, saying so; a
    VQ with other than 32 groups is refused in one line naming the field."""
    import dataclasses

    from janusflow.configs import presets
    from janusflow.models.build import build_model
    cfg = presets.tiny_janus_pro()
    with pytest.raises(ConfigError, match="vq.norm_groups=8"):
        hf.export_janusflow_hf(build_model(cfg, abstract=True), cfg, str(tmp_path / "no"),
                               layout=hf.TRANSFORMERS_JANUS)
    cfg = dataclasses.replace(cfg, vq=dataclasses.replace(cfg.vq, norm_groups=32))
    assert cfg.siglip.attn_pool
    m = build_model(cfg, abstract=True)          # zeros: no random-init compile, the names are the point
    for v in flat_params(m).values():
        v.set_value(np.zeros(v.get_value().shape, np.float32))
    said = []
    hf.export_janusflow_hf(m, cfg, str(tmp_path / "out"), layout=hf.TRANSFORMERS_JANUS, log=said.append)
    assert any("und_encoder.attn_pool" in s for s in said)
    keys = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert not any("attn_pool" in k or ".head." in k for k in keys)
    _, cfg2 = model_io.load_model(str(tmp_path / "out"))
    assert cfg2.siglip.depth == cfg.siglip.depth and not cfg2.siglip.attn_pool
