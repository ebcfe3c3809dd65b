"""Hostile and broken checkpoints: each is refused with one line naming the file (and key or
config.json field), before the long read or the model build; a shallow official-layout model
imports; NaN/inf weights are refused at convert and at load; ``--checkpoint`` accepts a
training or recipe workdir and names a missing directory."""

import json
import os
import time

import numpy as np
import pytest
from safetensors.numpy import save_file

from janusflow.checkpoint import hf, model_io
from janusflow.checkpoint.torch_layout import CheckpointMismatch, flat_params
from janusflow.cli.main import main
from janusflow.configs.schema import ConfigError, GenCodecConfig, LLMConfig, SiglipConfig
from janusflow.configs.presets import janusflow_1_3b
from test_hf import CFG, official_config_json, random_sd, write_hf_dir

# The official layout at official image size (384 px, 24x24 tokens), every width tiny and an
# LLM of 2 layers: shallower than the training default repa_layer=6.
SHALLOW = janusflow_1_3b(
    llm=LLMConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                  num_kv_heads=2, max_position_embeddings=64),
    siglip=SiglipConfig(image_size=384, patch_size=16, width=16, num_layers=1, num_heads=2,
                        mlp_ratio=2.0, select_layer=-1, attn_pool=True),
    gen_codec=GenCodecConfig(channels=16, kernel_size=2, stride=2, num_blocks=1),
    repa_layer=1, repa_hidden=16)


@pytest.fixture(scope="module")
def sd():
    return random_sd(CFG, seed=1)


def _dir(path, sd, **kw):
    """A tiny checkpoint whose config.json carries our block (tiny is not at official image size)."""
    kw.setdefault("config", hf.hf_config_from_model_config(CFG))
    return write_hf_dir(str(path), sd, **kw)


def _one_line_error(capsys, *names):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "error" in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in names:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _convert(src, tmp_path):
    return main(["convert", "--from-hf", str(src), "--out", str(tmp_path / "out")])


# ------------------------------------------------------------------------- weight files
@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_unreadable_safetensors_is_one_line(tmp_path, sd, capsys, damage):
    d = _dir(tmp_path / "hf", sd)
    f = os.path.join(d, "model.safetensors")
    raw = open(f, "rb").read()
    open(f, "wb").write(raw[:len(raw) // 2] if damage == "truncate" else b"\x00garbage" * 100)
    assert _convert(d, tmp_path) == 1
    _one_line_error(capsys, f, "not a readable safetensors file")
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("body,match", [
    ("[1, 2, 3]", "expected a JSON object, got a list; not a shard index"),
    ("{not json", "invalid JSON (Expecting property name"),
    ('{"weight_map": [1]}', "weight_map: expected an object"),
    ('{"weight_map": {"a": 3}}', "weight_map.a: expected a shard file name"),
])
def test_bad_shard_index_is_one_line_naming_it(tmp_path, sd, capsys, body, match):
    d = _dir(tmp_path / "hf", sd, shards=2)
    idx = os.path.join(d, "model.safetensors.index.json")
    open(idx, "w").write(body)
    assert _convert(d, tmp_path) == 1
    _one_line_error(capsys, idx, match)


def test_bad_tokenizer_json_fails_before_reading_weights(tmp_path, sd, capsys, monkeypatch):
    d = write_hf_dir(str(tmp_path / "hf"), sd, config=hf.hf_config_from_model_config(CFG))
    open(os.path.join(d, "tokenizer.json"), "w").write("{this is not json")
    read = []
    monkeypatch.setattr(hf.TensorSource, "iter", lambda self, keys=None: read.append(1) or iter(()))
    assert _convert(d, tmp_path) == 1
    _one_line_error(capsys, os.path.join(d, "tokenizer.json"), "not a readable tokenizer.json")
    assert read == []


# -------------------------------------------------------------------------- config.json
def _no_model_build(monkeypatch):
    def refuse(cfg, **kw):
        raise AssertionError(f"built the model for {cfg.llm.num_layers} LLM layers before checking the keys")
    monkeypatch.setattr(hf, "build_model", refuse)


def test_config_claiming_1000_layers_is_refused_from_the_headers(tmp_path, sd, capsys, monkeypatch):
    c = hf.hf_config_from_model_config(CFG)
    c["language_config"]["num_hidden_layers"] = 1000
    d = _dir(tmp_path / "hf", sd, config=c)
    _no_model_build(monkeypatch)
    t0 = time.time()
    with pytest.raises(CheckpointMismatch,
                       match=r"language_config\.num_hidden_layers gives 1000 .* but model\.safetensors "
                             r"holds 4 \(language_model\.model\.layers\.0\.\.3\)") as e:
        hf.load_janusflow_hf(d, base=CFG)
    assert "\n" not in str(e.value) and time.time() - t0 < 10
    with pytest.raises(CheckpointMismatch, match="num_hidden_layers"):      # sample / chat path
        model_io.load_model(d)


@pytest.mark.parametrize("where,value,match", [
    (("vision_gen_enc_config", "vision_gen_dec_config"), 500, r"vision_gen_enc_config\.params\.layers_in_middle gives 500"),
    (("vision_und_enc_config", "params", "layers"), 300, r"vision_und_enc_config\.params \(layers, select_layer\)"),
    (("language_config", "vocab_size"), 100000, r"language_config \(vocab_size, hidden_size\) implies "
                                               r"language_model\.model\.embed_tokens\.weight of shape \(100000, 64\)"),
    (("language_config", "intermediate_size"), 4096, r"\(intermediate_size\) implies"),
])
def test_config_sizes_checked_against_headers_before_the_model(tmp_path, sd, monkeypatch, where, value, match):
    c = hf.hf_config_from_model_config(CFG)
    if where[0] == "vision_gen_enc_config":       # encoder and decoder share the count
        for part in where:
            c[part]["params"]["layers_in_middle"] = value
    else:
        node = c
        for k in where[:-1]:
            node = node[k]
        node[where[-1]] = value
    d = _dir(tmp_path / "hf", sd, config=c)
    _no_model_build(monkeypatch)
    with pytest.raises(CheckpointMismatch, match=match) as e:
        hf.load_janusflow_hf(d)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("field,value", [("attention_bias", 0), ("hidden_act", ["silu"]),
                                         ("num_hidden_layers", "4"), ("tie_word_embeddings", "false")])
def test_config_field_types_checked(field, value):
    c = official_config_json(CFG)
    c["language_config"][field] = value
    with pytest.raises(ConfigError, match=rf"config\.json: language_config\.{field}"):
        hf.model_config_from_hf(c, base=CFG)


# ---------------------------------------------------------------- a shallow official model
def test_shallow_official_layout_imports_without_repa_default(tmp_path, capsys):
    sd = random_sd(SHALLOW, seed=2)
    d = write_hf_dir(str(tmp_path / "hf"), sd, cfg=SHALLOW)        # config.json only: no block of ours
    model, cfg = model_io.load_model(d)
    assert cfg.llm.num_layers == 2 and cfg.repa_layer == 2           # default 6, clamped to the depth
    assert np.array_equal(np.asarray(model.language_model.embed_tokens.get_value()),
                          sd["language_model.model.embed_tokens.weight"])
    assert main(["convert", "--from-hf", d, "--out", str(tmp_path / "ck")]) == 0


# ------------------------------------------------------------------------ NaN/inf weights
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_weights_refused_at_convert_and_load(tmp_path, sd, capsys, bad):
    key = "vision_gen_dec_aligner.weight"
    poisoned = dict(sd)
    poisoned[key] = sd[key].copy()
    poisoned[key][3, 1] = bad
    d = write_hf_dir(str(tmp_path / "hf"), poisoned, config=hf.hf_config_from_model_config(CFG))
    assert _convert(d, tmp_path) == 1
    _one_line_error(capsys, "model.safetensors", f"tensor {key} holds NaN or inf")
    assert not os.path.exists(tmp_path / "out")
    with pytest.raises(CheckpointMismatch, match=key):
        model_io.load_model(d)


def test_non_finite_native_checkpoint_refused_at_load(tmp_path, sd):
    d = write_hf_dir(str(tmp_path / "hf"), sd, config=hf.hf_config_from_model_config(CFG))
    model, cfg = model_io.load_model(d)
    var = model.gen_aligner.kernel
    var.set_value(var.get_value().at[0, 0].set(np.nan))
    ck = model_io.save_model(str(tmp_path / "ck"), model, cfg)
    with pytest.raises(CheckpointMismatch, match=r"parameter gen_aligner/kernel holds NaN or inf"):
        model_io.load_model(ck)


# -------------------------------------------------------------------- --checkpoint paths
@pytest.fixture(scope="module")
def native(tmp_path_factory, sd):
    root = tmp_path_factory.mktemp("native")
    d = write_hf_dir(str(root / "hf"), sd, config=hf.hf_config_from_model_config(CFG))
    model, cfg = model_io.load_model(d)
    return model, cfg, root


def test_checkpoint_resolves_training_and_recipe_workdirs(native, tmp_path):
    from janusflow.train.recipe import PHASES
    model, cfg, _ = native
    run = tmp_path / "run"
    model_io.save_model(str(run / "model"), model, cfg)
    ema = model_io.save_model(str(run / "model_ema"), model, cfg)
    recipe = tmp_path / "recipe"
    last = model_io.save_model(str(recipe / PHASES[-1] / "model_ema"), model, cfg)
    said = []
    assert model_io.resolve_checkpoint(str(run), said.append) == ema
    assert model_io.resolve_checkpoint(str(recipe), said.append) == last
    assert said == [f"{run} is a training workdir: using its final EMA model {ema}",
                    f"{recipe} is a recipe workdir: using its final EMA model {last}"]
    assert model_io.resolve_checkpoint(ema, said.append) == ema and len(said) == 2
    os.makedirs(tmp_path / "unfinished" / "checkpoints")
    with pytest.raises(FileNotFoundError, match="training workdir without a final model"):
        model_io.resolve_checkpoint(str(tmp_path / "unfinished"))


def test_cli_checkpoint_workdir_and_missing_dir(native, tmp_path, capsys):
    model, cfg, _ = native
    run = tmp_path / "run"
    ema = model_io.save_model(str(run / "model_ema"), model, cfg)
    out = tmp_path / "s"
    assert main(["sample", "--checkpoint", str(run), "--out", str(out), "--n", "1", "--steps", "1",
                 "--prompt-ids", "1,2,3", "--no-progress"]) == 0
    assert f"using its final EMA model {ema}" in capsys.readouterr().err
    assert os.path.isfile(out / "00000_00.png")
    missing = str(tmp_path / "nope")
    for cmd in (["sample", "--checkpoint", missing, "--out", str(out), "--prompt", "a red circle"],
                ["chat", "--checkpoint", missing, "--image", str(out / "00000_00.png"), "--question", "what?"]):
        assert main(cmd) == 1
        line = _one_line_error(capsys, f"--checkpoint {missing}: no such directory")
        assert "tokenizer" not in line
