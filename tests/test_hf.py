"""Checkpoint conversion: config.json parsing, official-layout import/export (bit-identical round
trips, sharding, bf16, .bin), error reporting by key name, streaming memory, native orbax
checkpoints, the ``convert`` CLI, component importers (HF LLaMA, HF SigLIP, diffusers VAE) and
strict loading of the export into the official PyTorch modules."""

import dataclasses
import json
import os
import subprocess
import sys
import tracemalloc
import types

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from janusflow.configs import io as config_io
from janusflow.checkpoint import hf, model_io
from janusflow.checkpoint.tensor_io import shape_probe
from janusflow.checkpoint.torch_layout import CheckpointMismatch, flat_params, to_ours, to_torch
from janusflow.configs.schema import ConfigError, ExperimentConfig, LLMConfig, ModelConfig
from janusflow.configs.presets import janusflow_1_3b, tiny
from janusflow.models.build import build_model
from janusflow.models.layer_stack import layer

CFG = tiny()
# a git checkout of the official deepseek-ai/Janus repository, when the machine has one (never a
# default path: the test names the variable it wants rather than guessing a machine layout)
MIRROR = os.environ.get("JANUS_MIRROR", "")


# ------------------------------------------------------------------------------------ helpers
_SHAPES = {}


def torch_shapes(cfg):
    """Official key -> torch shape, from the key map and the abstract model."""
    if cfg not in _SHAPES:
        params = flat_params(build_model(cfg, abstract=True))
        _SHAPES[cfg] = {k: to_torch(tr, shape_probe(params[p].get_value().shape)).shape
                        for k, (p, tr) in hf.janusflow_key_map(cfg).items()}
    return _SHAPES[cfg]


def random_sd(cfg, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32).astype(dtype)
            for k, s in torch_shapes(cfg).items()}


def official_config_json(cfg):
    """config.json as the official release writes it: no janusflow_jax block."""
    d = hf.hf_config_from_model_config(cfg)
    d.pop(hf.EXTRA_KEY)
    return d


def write_hf_dir(path, sd, cfg=CFG, shards=1, config=None):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as fh:
        json.dump(config if config is not None else official_config_json(cfg), fh)
    keys = list(sd)
    if shards == 1:
        save_file(sd, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
        return path
    parts = np.array_split(np.arange(len(keys)), shards)
    wm = {}
    for i, idx in enumerate(parts):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({keys[j]: sd[keys[j]] for j in idx}, os.path.join(path, name), metadata={"format": "pt"})
        wm.update({keys[j]: name for j in idx})
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {}, "weight_map": wm}, fh)
    return path


def read_dir(path):
    """All tensors of an exported directory (follows the shard index)."""
    out = {}
    for n in sorted(os.listdir(path)):
        if n.endswith(".safetensors"):
            with safe_open(os.path.join(path, n), framework="numpy") as f:
                for k in f.keys():
                    out[k] = f.get_tensor(k)
    return out


def assert_model_equals_sd(model, cfg, sd):
    params = flat_params(model)
    for k, (p, tr) in hf.janusflow_key_map(cfg).items():
        got = np.asarray(params[p].get_value())
        want = to_ours(k, tr, sd[k])
        assert got.dtype == want.dtype and np.array_equal(got, want), k


def assert_bit_identical(a, b):
    assert set(a) == set(b), (set(a) ^ set(b))
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k


@pytest.fixture(scope="module")
def sd():
    return random_sd(CFG, seed=0)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, sd):
    return write_hf_dir(str(tmp_path_factory.mktemp("hf") / "jf"), sd)


@pytest.fixture(scope="module")
def loaded(hf_dir):
    msgs = []
    model, cfg = hf.load_janusflow_hf(hf_dir, base=CFG, log=msgs.append)
    return model, cfg, msgs


# ------------------------------------------------------------------------------ config_io
def test_config_io_roundtrip_and_validation():
    exp = ExperimentConfig(name="x", model=tiny(), seq_len=256)
    back = config_io.from_dict(ExperimentConfig, json.loads(json.dumps(config_io.to_dict(exp))))
    assert back == exp and isinstance(back.model.siglip.pixel_mean, tuple)
    d = config_io.to_dict(CFG)
    with pytest.raises(ConfigError, match=r"llm\.num_layerz"):
        config_io.from_dict(ModelConfig, {**d, "llm": {**d["llm"], "num_layerz": 2}})
    with pytest.raises(ConfigError, match=r"llm\.num_layers: expected an int"):
        config_io.from_dict(ModelConfig, {**d, "llm": {**d["llm"], "num_layers": "2"}})
    with pytest.raises(ConfigError, match=r"siglip\.pixel_mean\[1\]"):
        config_io.from_dict(ModelConfig, {**d, "siglip": {**d["siglip"], "pixel_mean": [0.5, "a", 0.5]}})
    with pytest.raises(ConfigError, match=r"repa: expected a bool"):
        config_io.from_dict(ModelConfig, {**d, "repa": 1})
    assert config_io.from_dict(ModelConfig, {"llm": {"head_dim": None}}).llm.head_dim is None


# ----------------------------------------------------------------------------- config.json
OFFICIAL_STYLE = {     # the shape of the released config.json; absent fields take defaults
    "architectures": ["MultiModalityCausalLM"], "model_type": "multi_modality",
    "language_config": {"hidden_size": 2048, "intermediate_size": 5632, "max_position_embeddings": 16384,
                        "model_type": "llama", "num_attention_heads": 16, "num_hidden_layers": 24,
                        "num_key_value_heads": 16, "torch_dtype": "bfloat16", "vocab_size": 102400},
    "vision_und_enc_config": {"cls": "CLIPVisionTower", "model_type": "vision_und_enc", "params": {
        "image_size": 384, "model_name": "siglip_large_patch16_384", "select_feature": "same",
        "select_layer": -1}},
    "vision_gen_enc_config": {"cls": "ShallowUViTEncoder", "model_type": "vision_gen_enc", "params": {
        "block_out_channels": [768], "elementwise_affine": True, "hidden_size": 2048, "input_channels": 4,
        "kernel_size": 2, "layers_in_middle": 2, "norm_eps": 1e-5, "padding": 0, "stride": 2,
        "use_bias": True, "use_mid_block": True}},
    "vision_gen_dec_config": {"cls": "ShallowUViTDecoder", "model_type": "vision_gen_dec", "params": {
        "block_out_channels": [768], "elementwise_affine": True, "hidden_size": 2048, "in_channels": 768,
        "layers_in_middle": 2, "norm_eps": 1e-5, "out_channels": 4, "upsamples": 1, "use_bias": True,
        "use_mid_block": True}},
}


def test_official_style_config_and_parameter_count():
    cfg = hf.model_config_from_hf(OFFICIAL_STYLE, preprocessor={"image_mean": [0.4, 0.5, 0.6],
                                                                "image_std": [0.2, 0.3, 0.4]})
    l, s, g = cfg.llm, cfg.siglip, cfg.gen_codec
    assert (l.vocab_size, l.hidden_size, l.intermediate_size, l.num_layers, l.num_heads) == (102400, 2048, 5632, 24, 16)
    assert (l.rms_norm_eps, l.rope_theta, l.max_position_embeddings, l.tie_word_embeddings) == (1e-6, 1e4, 16384, False)
    assert (s.width, s.num_layers, s.num_heads, s.patch_size, s.image_size, s.depth, s.attn_pool) == (1024, 24, 16, 16, 384, 24, True)
    assert s.pixel_mean == (0.4, 0.5, 0.6) and s.pixel_std == (0.2, 0.3, 0.4)
    assert (g.channels, g.kernel_size, g.stride, g.in_padding, g.num_blocks, g.norm_eps, g.decoder_upsamples) == (768, 2, 2, 0, 2, 1e-5, 1)
    assert cfg.vae.latent_channels == 4 and cfg.num_gen_tokens == 576
    # Official parameter count (spec section 1): every checkpoint tensor, nothing else.
    assert sum(int(np.prod(s)) for s in torch_shapes(cfg).values()) == 2_046_367_504
    # transformers >= 5 spelling of rope theta, and select_layer's official default (-2)
    d = json.loads(json.dumps(OFFICIAL_STYLE))
    d["language_config"]["rope_parameters"] = {"rope_type": "default", "rope_theta": 5e5}
    del d["vision_und_enc_config"]["params"]["select_layer"]
    c2 = hf.model_config_from_hf(d)
    assert c2.llm.rope_theta == 5e5 and c2.siglip.depth == 23


@pytest.mark.parametrize("where,value,match", [
    (("language_config", "num_hidden_layers"), "24", r"language_config\.num_hidden_layers: expected a positive int"),
    (("language_config", "rms_norm_eps"), None, r"language_config\.rms_norm_eps: expected a number"),
    (("vision_gen_enc_config", "params", "kernel_size"), 2.0, r"vision_gen_enc_config\.params\.kernel_size"),
    (("vision_gen_dec_config", "params", "use_bias"), "yes", r"vision_gen_dec_config\.params\.use_bias"),
    (("vision_und_enc_config", "params", "model_name"), "siglip_huge", r"params\.model_name: unknown SigLIP"),
    (("vision_und_enc_config", "params", "pixel_mean"), [0.5, 0.5], r"params\.pixel_mean"),
    (("vision_gen_dec_config", "params", "layers_in_middle"), 3, r"vision_gen_dec_config\.params\.layers_in_middle"),
    (("vision_gen_dec_config", "params", "hidden_size"), 1024, r"vision_gen_dec_config\.params\.hidden_size"),
    (("language_config", "rope_scaling"), {"type": "linear"}, r"language_config\.rope_scaling"),
])
def test_bad_config_field_is_named(where, value, match):
    d = json.loads(json.dumps(OFFICIAL_STYLE))
    node = d
    for k in where[:-1]:
        node = node[k]
    node[where[-1]] = value
    with pytest.raises(ConfigError, match=match):
        hf.model_config_from_hf(d)


def test_bad_config_type_in_directory_is_named(tmp_path, sd):
    c = official_config_json(CFG)
    c["vision_gen_enc_config"]["params"]["stride"] = "4"
    write_hf_dir(str(tmp_path / "d"), {}, config=c)
    with pytest.raises(ConfigError, match=r"vision_gen_enc_config\.params\.stride"):
        hf.load_janusflow_hf(str(tmp_path / "d"), base=CFG)


def test_export_config_roundtrips():
    for cfg in (CFG, janusflow_1_3b(), dataclasses.replace(CFG, llm=dataclasses.replace(CFG.llm, tie_word_embeddings=True))):
        d = json.loads(json.dumps(hf.hf_config_from_model_config(cfg)))
        assert hf.model_config_from_hf(d) == cfg                      # via the janusflow_jax block
        d.pop(hf.EXTRA_KEY)
        assert hf.model_config_from_hf(d, base=cfg) == cfg            # official fields alone
    assert hf.hf_config_from_model_config(janusflow_1_3b())["vision_und_enc_config"]["params"]["model_name"] \
        == "siglip_large_patch16_384"


# --------------------------------------------------------------------------------- import
def test_import_equals_checkpoint(loaded, sd):
    model, cfg, msgs = loaded
    assert cfg == dataclasses.replace(CFG, param_dtype="float32")
    assert_model_equals_sd(model, cfg, sd)
    # torch (1, D) -> ours (D,); linear weights transposed
    assert np.array_equal(np.asarray(model.beg_of_und_embed.get_value()), sd["beg_of_und_embed"][0])
    assert np.array_equal(np.asarray(model.gen_aligner.kernel.get_value()), sd["vision_gen_enc_aligner.weight"].T)
    # REPA projector: not in the checkpoint, initialised and reported, not an error
    assert any("training-only" in m and "repa_projector.fc1.kernel" in m for m in msgs)
    k = np.asarray(model.repa_projector.fc1.kernel.get_value())
    assert k.shape == (CFG.llm.hidden_size, CFG.repa_hidden) and k.std() > 0


def test_sharded_import_and_bit_identical_roundtrip(tmp_path, sd):
    src = write_hf_dir(str(tmp_path / "in"), sd, shards=2)
    assert len([n for n in os.listdir(src) if n.endswith(".safetensors")]) == 2
    model, cfg = hf.load_janusflow_hf(src, base=CFG)
    assert_model_equals_sd(model, cfg, sd)
    out = str(tmp_path / "out")
    hf.export_janusflow_hf(model, cfg, out)
    assert_bit_identical(read_dir(out), sd)
    # exporting sharded gives the same tensors, an index, and reloads
    out2 = str(tmp_path / "out2")
    names = hf.export_janusflow_hf(model, cfg, out2, max_shard_bytes=300_000)
    assert len(names) > 2 and os.path.isfile(os.path.join(out2, "model.safetensors.index.json"))
    assert_bit_identical(read_dir(out2), sd)
    m3, c3 = hf.load_janusflow_hf(out2)                       # config from the exported json alone
    assert c3 == cfg
    assert_model_equals_sd(m3, c3, sd)


def test_bf16_roundtrip_bit_identical(tmp_path):
    sd16 = random_sd(CFG, seed=1, dtype=ml_dtypes.bfloat16)
    src = write_hf_dir(str(tmp_path / "in"), sd16)
    model, cfg = hf.load_janusflow_hf(src, dtype="bfloat16", base=CFG)
    assert cfg.param_dtype == "bfloat16"
    assert model.language_model.embed_tokens.get_value().dtype == jnp.bfloat16
    hf.export_janusflow_hf(model, cfg, str(tmp_path / "out"))
    out = read_dir(str(tmp_path / "out"))
    assert_bit_identical(out, sd16)
    assert json.load(open(tmp_path / "out" / "config.json"))["torch_dtype"] == "bfloat16"
    # bf16 checkpoint loaded as float32: exact upcast
    m32, _ = hf.load_janusflow_hf(src, dtype="float32", base=CFG)
    got = np.asarray(m32.gen_decoder_norm.scale.get_value())
    assert got.dtype == np.float32 and np.array_equal(got, sd16["vision_gen_dec_aligner_norm.weight"].astype(np.float32))


def test_renamed_key_reports_missing_and_unexpected(tmp_path, sd):
    bad = dict(sd)
    old = "language_model.model.layers.1.mlp.up_proj.weight"
    new = "language_model.model.layers.1.mlp.upp_proj.weight"
    bad[new] = bad.pop(old)
    with pytest.raises(CheckpointMismatch) as e:
        hf.load_janusflow_hf(write_hf_dir(str(tmp_path / "d"), bad), base=CFG)
    msg = str(e.value)
    assert f"missing keys (1): {old}" in msg and f"unexpected keys (1): {new}" in msg


def test_misshaped_and_missing_tensors_are_named(tmp_path, sd):
    bad = dict(sd)
    bad["vision_gen_enc_model.in_conv.weight"] = np.zeros((32, 3, 3, 3), np.float32)     # kernel 4 expected
    bad["beg_of_und_embed"] = np.zeros((2, CFG.llm.hidden_size), np.float32)
    del bad["vision_und_enc_model.vision_tower.attn_pool.latent"]
    with pytest.raises(CheckpointMismatch) as e:
        hf.load_janusflow_hf(write_hf_dir(str(tmp_path / "d"), bad), base=CFG)
    msg = str(e.value)
    assert "vision_gen_enc_model.in_conv.weight: checkpoint shape (32, 3, 3, 3), model expects (32, 3, 4, 4)" in msg
    assert "beg_of_und_embed: checkpoint shape (2, 64)" in msg
    assert "vision_und_enc_model.vision_tower.attn_pool.latent" in msg


def test_bin_checkpoint_read_with_weights_only(tmp_path, sd, monkeypatch):
    torch = pytest.importorskip("torch")
    d = str(tmp_path / "bin")
    os.makedirs(d)
    json.dump(official_config_json(CFG), open(os.path.join(d, "config.json"), "w"))
    tsd = {k: torch.from_numpy(v.copy()) for k, v in sd.items()}
    tsd["beg_of_und_embed"] = tsd["beg_of_und_embed"].to(torch.bfloat16)        # mixed dtypes
    tsd["language_model.model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.arange(8.0)  # old HF buffer
    torch.save(tsd, os.path.join(d, "pytorch_model.bin"))
    msgs = []
    model, cfg = hf.load_janusflow_hf(d, base=CFG, log=msgs.append)
    assert any("skipped 1 derived RoPE buffers" in m for m in msgs)
    want = dict(sd, beg_of_und_embed=sd["beg_of_und_embed"].astype(ml_dtypes.bfloat16).astype(np.float32))
    assert_model_equals_sd(model, cfg, want)
    # anything that is not plain tensors is refused, never unpickled
    evil = str(tmp_path / "evil")
    os.makedirs(evil)
    json.dump(official_config_json(CFG), open(os.path.join(evil, "config.json"), "w"))
    torch.save({"x": types.SimpleNamespace(a=1)}, os.path.join(evil, "pytorch_model.bin"))
    with pytest.raises(CheckpointMismatch, match="weights_only"):
        hf.load_janusflow_hf(evil, base=CFG)
    monkeypatch.setitem(sys.modules, "torch", None)                              # torch "not installed"
    with pytest.raises(ImportError, match="needs torch"):
        hf.load_janusflow_hf(d, base=CFG)


def test_streaming_load_does_not_materialise_the_state_dict(tmp_path):
    cfg = tiny(llm=LLMConfig(vocab_size=1024, hidden_size=128, intermediate_size=256, num_layers=8,
                             num_heads=4, num_kv_heads=2, max_position_embeddings=512))
    big = random_sd(cfg, seed=2)
    total = sum(v.nbytes for v in big.values())
    assert total > 5e6
    d = write_hf_dir(str(tmp_path / "big"), big, cfg)
    source = hf.TensorSource(d)
    model = build_model(cfg, abstract=True)
    # warm-up load: jax's first-call compilations (a scanned model's row writer) are traced by
    # tracemalloc too, and are not host staging of tensors
    hf.stream_load(build_model(cfg, abstract=True), source, hf.janusflow_key_map(cfg), training_only=hf.TRAINING_ONLY)
    tracemalloc.start()
    try:
        # control: the measurement sees a materialised state dict
        whole = dict(hf.iter_tensors(d))
        control = tracemalloc.get_traced_memory()[1]
        del whole
        tracemalloc.reset_peak()
        hf.stream_load(model, source, hf.janusflow_key_map(cfg), training_only=hf.TRAINING_ONLY)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert control > 0.9 * total
    # jax buffers (the model itself) are not traced; host staging must stay far below one copy
    assert peak < 0.5 * total + 1e6, (peak, total)
    assert_model_equals_sd(model, cfg, big)


# --------------------------------------------------------------------------------- export
def test_export_refuses_non_empty_dir_and_overwrite_clears_stale_shards(tmp_path, loaded, sd):
    model, cfg, _ = loaded
    out = str(tmp_path / "o")
    hf.export_janusflow_hf(model, cfg, out, max_shard_bytes=300_000)
    with pytest.raises(FileExistsError, match="not empty"):
        hf.export_janusflow_hf(model, cfg, out)
    open(os.path.join(out, "README.md"), "w").write("keep me")
    hf.export_janusflow_hf(model, cfg, out, overwrite=True)
    assert sorted(os.listdir(out)) == ["README.md", "config.json", "model.safetensors"]
    assert_bit_identical(read_dir(out), sd)


def test_export_loads_strictly_into_official_torch_modules(tmp_path, loaded, sd):
    """The official PyTorch classes accept the export with strict key matching: transformers'
    LlamaForCausalLM, the official ShallowUViT encoder/decoder (from the Janus mirror when
    present, else their names and shapes from a committed fixture) and the aligners; the SigLIP keys equal the timm layout derived from transformers'
    SiglipVisionModel (timm itself is not installed)."""
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("transformers")
    model, cfg, _ = loaded
    out = str(tmp_path / "o")
    hf.export_janusflow_hf(model, cfg, out)
    exported = {k: torch.from_numpy(v.copy()) for k, v in read_dir(out).items()}
    conf = json.load(open(os.path.join(out, "config.json")))

    def part(prefix):
        return {k[len(prefix):]: v for k, v in exported.items() if k.startswith(prefix)}
    seen = set()

    def strict(module, prefix):
        sub = part(prefix)
        module.load_state_dict(sub, strict=True)
        seen.update(prefix + k for k in sub)

    lang = dict(conf["language_config"])
    strict(tf.LlamaForCausalLM(tf.LlamaConfig(**lang)), "language_model.")
    d, w, c = cfg.llm.hidden_size, cfg.siglip.width, cfg.gen_codec.channels
    strict(torch.nn.Linear(w, d), "vision_und_enc_aligner.")
    strict(torch.nn.Linear(c, d), "vision_gen_enc_aligner.")
    strict(torch.nn.Linear(d, c), "vision_gen_dec_aligner.")
    assert tuple(exported["beg_of_und_embed"].shape) == (1, d)
    assert tuple(exported["vision_gen_dec_aligner_norm.weight"].shape) == (d,)
    seen.update({"beg_of_und_embed", "vision_gen_dec_aligner_norm.weight"})
    # SigLIP: transformers SiglipVisionModel -> timm names/shapes (independent of our key map)
    s = cfg.siglip
    hfm = tf.SiglipVisionModel(tf.SiglipVisionConfig(
        hidden_size=s.width, intermediate_size=s.mlp_dim, num_hidden_layers=s.num_layers,
        num_attention_heads=s.num_heads, image_size=s.image_size, patch_size=s.patch_size))
    from janusflow.checkpoint.key_maps import hf_siglip_to_timm_state_dict
    hsd = {k: v for k, v in hfm.state_dict().items() if "position_ids" not in k}
    timm = hf_siglip_to_timm_state_dict(hsd, s, hf_prefix=next(k for k in hsd if "patch_embedding" in k).split("embeddings")[0])
    vt = part("vision_und_enc_model.vision_tower.")
    assert {k: tuple(v.shape) for k, v in vt.items()} == {k: tuple(v.shape) for k, v in timm.items()}
    seen.update("vision_und_enc_model.vision_tower." + k for k in vt)
    gen = {k for k in exported if k.startswith(("vision_gen_enc_model.", "vision_gen_dec_model."))}
    assert seen | gen == set(exported)   # only the gen codec is left: checked below with the official code
    uvit = _official_uvit()
    if uvit is not None:
        strict(uvit.ShallowUViTEncoder(**conf["vision_gen_enc_config"]["params"]), "vision_gen_enc_model.")
        strict(uvit.ShallowUViTDecoder(**conf["vision_gen_dec_config"]["params"]), "vision_gen_dec_model.")
    else:
        # without a checkout: the official modules' names and shapes, recorded by
        # tests/fixtures/make_janusflow_uvit_keys.py for this config
        official = json.load(open(os.path.join(os.path.dirname(__file__), "fixtures", "janusflow_uvit_keys.json")))
        for part in ("vision_gen_enc", "vision_gen_dec"):
            assert official[part]["params"] == conf[f"{part}_config"]["params"], \
                f"{part}: the fixture was made for other params: re-run make_janusflow_uvit_keys.py"
            ours = {k[len(part) + 7:]: list(v.shape) for k, v in exported.items() if k.startswith(f"{part}_model.")}
            assert ours == official[part]["state_dict"]
            seen.update(f"{part}_model.{k}" for k in ours)
    assert seen == set(exported)


def _official_uvit():
    if not MIRROR:
        return None
    try:
        src = subprocess.run(["git", "-C", MIRROR, "show", "HEAD:janus/janusflow/models/uvit.py"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    import diffusers.models.embeddings  # noqa: F401  (imported before the stub: it probes torchvision)
    import transformers.models.llama.modeling_llama  # noqa: F401
    saved = {k: sys.modules.get(k) for k in ("torchvision", "torchvision.utils")}
    tv = types.ModuleType("torchvision")                 # imported by uvit.py, never used by the codec
    tv.utils = types.ModuleType("torchvision.utils")
    sys.modules.update({"torchvision": tv, "torchvision.utils": tv.utils})
    try:
        mod = types.ModuleType("official_uvit")
        exec(compile(src, "janus/janusflow/models/uvit.py", "exec"), mod.__dict__)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return mod


# --------------------------------------------------------------------- native checkpoints
def test_save_and_load_model_roundtrip(tmp_path, loaded):
    model, cfg, _ = loaded
    path = str(tmp_path / "ckpt")
    model_io.save_model(path, model, cfg)
    with pytest.raises(FileExistsError):
        model_io.save_model(path, model, cfg)
    m2, c2 = model_io.load_model(path)
    assert c2 == cfg
    a, b = flat_params(model), flat_params(m2)
    assert set(a) == set(b)
    for k in a:                                   # the REPA projector included
        x, y = np.asarray(a[k].get_value()), np.asarray(b[k].get_value())
        assert x.dtype == y.dtype and np.array_equal(x, y), k
    assert b[("language_model", "embed_tokens")].get_metadata()["axes"] == ("vocab", "embed")
    m3, c3 = model_io.load_model(path, dtype="bfloat16")
    assert c3.param_dtype == "bfloat16" and m3.gen_aligner.kernel.get_value().dtype == jnp.bfloat16
    # a config that disagrees with the saved params is reported, not half-loaded
    meta = json.load(open(os.path.join(path, model_io.CONFIG_NAME)))
    meta["model"]["llm"]["intermediate_size"] = 96
    json.dump(meta, open(os.path.join(path, model_io.CONFIG_NAME), "w"))
    with pytest.raises(CheckpointMismatch, match="mlp/down_proj/kernel"):
        model_io.load_model(path)


def test_load_model_accepts_hf_dir_and_rejects_others(tmp_path, hf_dir, sd):
    # the fixture's config.json has no janusflow_jax block: write one with it
    d = write_hf_dir(str(tmp_path / "hfj"), sd, config=hf.hf_config_from_model_config(CFG))
    model, cfg = model_io.load_model(d)
    assert cfg.llm == CFG.llm and cfg.vae == CFG.vae
    assert_model_equals_sd(model, cfg, sd)
    os.makedirs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        model_io.load_model(str(tmp_path / "empty"))


def test_convert_cli_end_to_end(tmp_path, sd, capsys):
    from janusflow.cli.main import main
    from janusflow.data.pipeline import shapes_tokenizer
    from janusflow.data.tokenizer import Tokenizer, generation_prompt_ids
    src = write_hf_dir(str(tmp_path / "hf"), sd, config=hf.hf_config_from_model_config(CFG))
    tok = shapes_tokenizer(512)
    tok.save(os.path.join(src, "tokenizer.json"))      # the release ships its tokenizer beside the weights
    ck, out = str(tmp_path / "ck"), str(tmp_path / "out")
    assert main(["convert", "--from-hf", src, "--out", ck]) == 0
    assert os.path.isfile(os.path.join(ck, model_io.CONFIG_NAME))
    err = capsys.readouterr().err
    assert f"{len(sd)}/{len(sd)} tensors" in err and "training-only" in err
    assert main(["convert", "--to-hf", ck, "--out", out]) == 0
    assert_bit_identical(read_dir(out), sd)
    ref = generation_prompt_ids(tok, "a photo of a red cross", CFG.head)
    for d in (ck, out):   # the tokenizer travels both ways
        assert generation_prompt_ids(Tokenizer.load(d), "a photo of a red cross", CFG.head) == ref, d
    assert main(["convert", "--from-hf", src, "--out", ck]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["convert", "--from-hf", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 1
    assert "nope" in capsys.readouterr().err


# ---------------------------------------------------------------------- component importers
def test_load_llama_dir(tmp_path, loaded):
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("transformers")
    l = CFG.llm
    hcfg = tf.LlamaConfig(vocab_size=l.vocab_size, hidden_size=l.hidden_size, intermediate_size=l.intermediate_size,
                          num_hidden_layers=l.num_layers, num_attention_heads=l.num_heads,
                          num_key_value_heads=l.num_kv_heads, rms_norm_eps=l.rms_norm_eps,
                          rope_theta=l.rope_theta, max_position_embeddings=l.max_position_embeddings)
    torch.manual_seed(0)
    ref = tf.LlamaForCausalLM(hcfg)
    d = str(tmp_path / "llama")
    ref.save_pretrained(d)
    model = nnx.clone(loaded[0])          # the shared fixture stays untouched
    before = np.asarray(model.gen_aligner.kernel.get_value())
    hf.load_llama_into(model, d)
    rsd = ref.state_dict()
    q = np.asarray(layer(model.language_model.layers, 2).self_attn.k_proj.kernel.get_value())
    assert np.array_equal(q, rsd["model.layers.2.self_attn.k_proj.weight"].numpy().T)
    assert np.array_equal(np.asarray(model.language_model.lm_head.kernel.get_value()), rsd["lm_head.weight"].numpy().T)
    assert np.array_equal(np.asarray(model.language_model.norm.scale.get_value()), rsd["model.norm.weight"].numpy())
    assert np.array_equal(np.asarray(model.gen_aligner.kernel.get_value()), before)       # rest untouched
    conf = json.load(open(os.path.join(d, "config.json")))
    conf["intermediate_size"] = 96
    json.dump(conf, open(os.path.join(d, "config.json"), "w"))
    with pytest.raises(ConfigError, match="intermediate_size=96 but cfg.llm.intermediate_size=128"):
        hf.load_llama_into(model, d)


def test_load_siglip_layouts(tmp_path, loaded, sd):
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("transformers")
    from janusflow.checkpoint.key_maps import export_hf_siglip
    from janusflow.models.siglip import SiglipVisionTower
    s = CFG.siglip
    torch.manual_seed(0)
    ref = tf.SiglipVisionModel(tf.SiglipVisionConfig(
        hidden_size=s.width, intermediate_size=s.mlp_dim, num_hidden_layers=s.num_layers,
        num_attention_heads=s.num_heads, image_size=s.image_size, patch_size=s.patch_size,
        layer_norm_eps=s.layer_norm_eps, hidden_act="gelu", vision_use_head=True,
        attn_implementation="eager")).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    d = str(tmp_path / "siglip")
    ref.save_pretrained(d)
    tower = nnx.eval_shape(lambda: SiglipVisionTower(s, rngs=nnx.Rngs(0)))
    assert hf.load_siglip_into(tower, d) == "hf"
    x = np.random.default_rng(0).standard_normal((2, s.image_size, s.image_size, 3)).astype(np.float32)
    with torch.no_grad():
        want = ref(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).last_hidden_state.numpy()
    got = np.asarray(nnx.jit(lambda m, v: m(v))(tower, jnp.asarray(x)))
    assert np.abs(got - want).max() < 1e-4
    # in-memory HF state dict with the SiglipModel prefix, explicit layout
    pref = {"vision_model." + k: v for k, v in export_hf_siglip(tower).items()}
    t2 = nnx.eval_shape(lambda: SiglipVisionTower(s, rngs=nnx.Rngs(0)))
    assert hf.load_siglip_into(t2, pref, layout="hf") == "hf"
    # bare timm layout, and the JanusFlow layout inside a full checkpoint directory
    from janusflow.checkpoint.torch_layout import export_state_dict
    from janusflow.checkpoint.key_maps import siglip_key_map as torch_key_map
    timm = export_state_dict(tower, torch_key_map(s))
    model = nnx.clone(loaded[0])
    assert hf.load_siglip_into(model, timm) == "timm"
    assert np.array_equal(np.asarray(model.und_encoder.pos_embed.get_value()), timm["pos_embed"])
    before = np.asarray(model.gen_aligner.kernel.get_value())
    jd = write_hf_dir(str(tmp_path / "jf"), random_sd(CFG, seed=7))
    assert hf.load_siglip_into(model, jd, layout="janusflow") == "janusflow"
    assert np.array_equal(np.asarray(model.und_encoder.pos_embed.get_value()),
                          random_sd(CFG, seed=7)["vision_und_enc_model.vision_tower.pos_embed"])
    assert np.array_equal(np.asarray(model.gen_aligner.kernel.get_value()), before)
    with pytest.raises(CheckpointMismatch, match="no SigLIP weights in the hf layout"):
        hf.load_siglip_into(model, timm, layout="hf")


def test_load_vae_diffusers_dir(tmp_path):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    kw = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
              up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
              latent_channels=4, norm_num_groups=8, scaling_factor=0.5)
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKL(**kw).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(torch.randn_like(p) / (p[0].numel() ** 0.5) if p.ndim > 1 else
                    1 + 0.3 * torch.randn_like(p) if name.endswith("weight") else 0.3 * torch.randn_like(p))
    d = str(tmp_path / "vae")
    ref.save_pretrained(d, safe_serialization=True)
    vae, vcfg = hf.load_vae(d)
    assert (vcfg.block_out_channels, vcfg.latent_channels, vcfg.scaling_factor, vcfg.norm_num_groups) == ((16, 32), 4, 0.5, 8)
    z = np.random.default_rng(0).standard_normal((2, 8, 8, 4)).astype(np.float32)
    with torch.no_grad():
        want = ref.decode(torch.from_numpy(z.transpose(0, 3, 1, 2).copy())).sample.numpy().transpose(0, 2, 3, 1)
    decode = nnx.jit(lambda m, v: m.decode(v))
    got = np.asarray(decode(vae, jnp.asarray(z)))
    assert np.abs(got - want).max() < 1e-4
    # pre-0.14 attention names with 1x1-conv weights load to the same module
    with safe_open(os.path.join(d, "diffusion_pytorch_model.safetensors"), framework="numpy") as f:
        cur = {k: f.get_tensor(k) for k in f.keys()}
    old_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    legacy = {}
    for k, v in cur.items():
        for new, old in old_names.items():
            if f".attentions.0.{new}." in k:
                k = k.replace(f".{new}.", f".{old}.")
                v = v[:, :, None, None] if v.ndim == 2 else v
        legacy[k] = v
    assert any(".query.weight" in k for k in legacy)
    save_file(legacy, os.path.join(d, "diffusion_pytorch_model.safetensors"))
    vae2, _ = hf.load_vae(d)
    assert np.array_equal(np.asarray(decode(vae2, jnp.asarray(z))), got)
    conf = json.load(open(os.path.join(d, "config.json")))
    conf["layers_per_block"] = "1"
    json.dump(conf, open(os.path.join(d, "config.json"), "w"))
    with pytest.raises(ConfigError, match="layers_per_block"):
        hf.load_vae(d)
