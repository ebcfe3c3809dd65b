"""Precomputed VQ codes (Janus-Pro): `janusflow data latents` on a model that generates image
tokens stores the frozen tokenizer's codes of a saved model, the pipeline yields them in place
of the images, the step's loss on them equals its loss on the images, and mismatches (another
VQ, another token count, no checkpoint) are refused in one line naming the field."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import nnx

from janusflow.checkpoint.model_io import load_model, save_model
from janusflow.cli.main import main
from janusflow.configs import presets
from janusflow.configs.data import DataConfig, SourceConfig
from janusflow.configs.schema import ExperimentConfig, OptimConfig, TrainConfig
from janusflow.data import latents as lat_mod
from janusflow.data import preprocess as pp
from janusflow.data.pipeline import make_pipeline, shapes_tokenizer
from janusflow.data.sources import open_source
from janusflow.models.build import abstract_model
from janusflow.shapes.dataset import build_shapes, shapes_config
from janusflow.train.step import loss_sums
from janusflow.train.synthetic import synthetic_batch

N_TRAIN = 12
BATCH = 5                       # the command's encoder batch: 12 images = 5 + 5 + 2 (padded)
MODEL = presets.tiny_janus_pro()
ARGS = ["data", "latents", "--config", "tiny_janus_pro"]


@pytest.fixture(autouse=True)
def _no_default_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("JANUSFLOW_DATA_DIR", str(tmp_path / "default_data_dir"))


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    tfds.disable_progress_bar()
    return build_shapes(str(tmp_path_factory.mktemp("tfds")), shapes_config(32, N_TRAIN, 4))


def _filled(shape, dtype, name, rng):
    """A parameter drawn with numpy: the model's own init (threefry per parameter) takes ~30 s
    on this shared CPU, and any weights serve as long as the VQ is not the one a fresh run of
    the experiment would build."""
    if len(shape) == 1:
        return (np.ones(shape) if name == "scale" else 0.02 * rng.standard_normal(shape)).astype(dtype)
    fan_in = int(np.prod(shape[:-1]))
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(dtype)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A saved tiny Janus-Pro model (the writer's --checkpoint)."""
    model = abstract_model(MODEL)
    state = nnx.state(model, nnx.Param)
    rng = np.random.default_rng(7)
    pure = jax.tree_util.tree_map_with_path(
        lambda p, s: _filled(s.shape, s.dtype, str(getattr(p[-1], "key", "")), rng), nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)
    return save_model(str(tmp_path_factory.mktemp("ckpt") / "model"), model, MODEL)


@pytest.fixture(scope="module")
def built(shapes_dir, checkpoint, tmp_path_factory):
    """`janusflow data latents --checkpoint` over the shapes train split, tiny Janus-Pro."""
    out = tmp_path_factory.mktemp("codes")
    assert main([*ARGS, "--set", f"data.gen.name={shapes_dir}", "--checkpoint", checkpoint,
                 "--out", str(out), "--batch", str(BATCH), "--name", "shapes_codes"]) == 0
    return str(out / "shapes_codes" / "1.0.0")


def _cfg(model=MODEL, gen=4):
    return ExperimentConfig(name="codes", model=model, seq_len=256,
                            train=TrainConfig(stage=2, und_batch=0, gen_batch=gen, text_batch=0,
                                              optim=OptimConfig(lr=1e-3, warmup_steps=1)))


def _all(path):
    src = open_source(SourceConfig(name=path), "image")
    return [src[i] for i in range(len(src))]


def _crop(record):
    """The writer's input: the centre crop in [-1, 1]."""
    return pp.to_vae(pp.resize_short_side_random_crop(pp.decode_image(record["image"]), MODEL.image_size, None))


def _pipeline(path, model=MODEL, seed=2):
    data = DataConfig(gen=SourceConfig(name=path, latents=True), num_threads=0, seed=seed)
    return make_pipeline(_cfg(model), data, shapes_tokenizer(512), process_index=0, process_count=1)


def _row_record(stored: dict, codes) -> int:
    """The id of the one stored record whose codes are this row's."""
    match = [i for i, r in stored.items() if np.array_equal(r["codes"], codes)]
    assert len(match) == 1, match
    return match[0]


def test_codes_command_stores_the_checkpoint_vq_codes_and_the_pipeline_yields_them(built, shapes_dir,
                                                                                    checkpoint):
    model, saved_cfg = load_model(checkpoint)
    assert saved_cfg == MODEL
    meta = json.loads(open(os.path.join(built, lat_mod.MANIFEST)).read())
    assert meta["feature"] == "codes" and meta["code_shape"] == [64] and meta["dtype"] == "int32"
    assert meta["vq"] == lat_mod.config_fields(MODEL.vq) and meta["image_size"] == 32
    assert meta["splits"] == {"train": N_TRAIN} and meta["source"]["name"] == shapes_dir
    assert meta["vq_fingerprint"] == lat_mod.fingerprint(nnx.to_pure_dict(nnx.state(model.gen_vision, nnx.Param)))
    # The saved model's tokenizer over the same centre crops, in the command's batches of 5
    # (the last one zero-padded): what was stored is exactly its output.
    encode = nnx.jit(lambda vq, x: vq.encode(x)[0])
    orig = _all(shapes_dir)
    want = {}
    for lo in range(0, N_TRAIN, BATCH):
        recs = orig[lo:lo + BATCH]
        x = [_crop(r) for r in recs] + [np.zeros((32, 32, 3), np.float32)] * (BATCH - len(recs))
        for r, c in zip(recs, np.asarray(encode(model.gen_vision, np.stack(x)))):
            want[int(r["id"])] = (r, c)
    stored = {int(r["id"]): r for r in _all(built)}
    assert sorted(stored) == sorted(want)
    for i, r in stored.items():
        o, c = want[i]
        assert r["codes"].dtype == np.int32 and r["codes"].shape == (64,)
        np.testing.assert_array_equal(r["codes"], c)
        assert r["image"] == o["image"] and r["caption"] == o["caption"]     # copied as they were
    # the codes say something about the image: not one sequence for every image
    assert len({tuple(r["codes"]) for r in stored.values()}) == N_TRAIN
    # The pipeline: gen rows carry the stored codes (bit-exact) instead of the images, in the
    # layout the step takes for precomputed codes.
    it = _pipeline(built)
    ref = synthetic_batch(_cfg(), latents=True)["gen"]
    for _ in range(4):                        # 16 rows > 12 records: crosses an epoch
        g = next(it)["gen"]
        assert set(g) == set(ref) and "images" not in g
        for k in ref:                         # prompts: data.prompt_len here, 16 in synthetic_batch
            assert g[k].dtype == ref[k].dtype and g[k].shape[0] == 4, k
        assert g["codes"].shape == ref["codes"].shape == (4, 64)
        for row in range(4):
            np.testing.assert_array_equal(g["codes"][row], want[_row_record(stored, g["codes"][row])][1])


def test_the_step_loss_on_pipeline_codes_equals_its_loss_on_the_images(built, checkpoint):
    model, _ = load_model(checkpoint)
    stored = {int(r["id"]): r for r in _all(built)}
    g = next(_pipeline(built, seed=5))["gen"]
    ids = [_row_record(stored, c) for c in g["codes"]]
    codes = {"gen": dict(g)}
    images = {"gen": {**{k: v for k, v in g.items() if k != "codes"},
                      "images": np.stack([_crop(stored[i]) for i in ids])}}    # encoded in the step
    noise = {"dropped": np.zeros((4,), bool)}
    cfg = _cfg()
    loss = jax.jit(lambda b: loss_sums(model, None, b, noise, cfg)["img"])
    a, b = float(loss(codes)), float(loss(images))
    assert a > 0 and a == b
    # the codes are what the loss reads: other rows' codes, another loss
    other = {"gen": {**g, "codes": np.roll(g["codes"], 1, axis=0)}}
    assert abs(float(loss(other)) - a) > 1e-4


def test_a_mismatching_vq_or_token_count_is_refused_naming_the_field(built):
    vq = dataclasses.replace(MODEL.vq, codebook_size=128)
    with pytest.raises(ValueError, match=r"precomputed codes .* vq\.codebook_size: codes 64 vs model 128"):
        _pipeline(built, model=dataclasses.replace(MODEL, vq=vq))
    with pytest.raises(ValueError, match=r"code_shape: codes \[64\] vs model \[256\]; image_size: codes 32 vs model 64"):
        _pipeline(built, model=presets.tiny_janus_pro(image_size=64))
    # the other family's dataset, both ways round
    with pytest.raises(ValueError, match="feature: dataset 'codes' vs model 'latents'"):
        _pipeline(built, model=presets.tiny())
    meta = json.loads(open(os.path.join(built, lat_mod.MANIFEST)).read())
    lat_mod.check_compatible(meta, MODEL)                                 # as written: accepted
    with pytest.raises(ValueError, match="feature: dataset 'latents' vs model 'codes'"):
        lat_mod.check_compatible({**meta, "feature": "latents"}, MODEL)


def test_no_checkpoint_or_another_vq_is_refused_in_one_line(shapes_dir, checkpoint, tmp_path, capsys):
    base = [*ARGS, "--set", f"data.gen.name={shapes_dir}", "--out", str(tmp_path / "out")]

    def refused(*extra):
        assert main([*base, *extra]) == 1
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and not (tmp_path / "out").exists()
        return err

    assert "randomly initialised VQ" in refused() and "--checkpoint DIR" in refused()
    assert "--vae: model.gen_head='autoregressive'" in refused("--vae", str(tmp_path))
    err = refused("--checkpoint", checkpoint, "--set", "model.vq.codebook_size=128")
    assert "model.vq in codebook_size (64 vs 128)" in err
    # a JanusFlow experiment's latents come from a VAE, never from a model checkpoint
    err = refused("--checkpoint", checkpoint, "--set", "model.gen_head=rectified_flow")
    assert "--checkpoint: model.gen_head='rectified_flow'" in err


def test_train_init_from_names_the_vq_when_no_checkpoint_is_given(built, shapes_dir, checkpoint, tmp_path):
    # a training workdir, as a warm start reads it: its model/ holds the weights
    workdir = tmp_path / "run"
    workdir.mkdir()
    os.symlink(checkpoint, workdir / "model")
    assert main([*ARGS, "--set", f"data.gen.name={shapes_dir}", "--set", f"train.init_from={workdir}",
                 "--out", str(tmp_path / "out"), "--batch", str(BATCH), "--name", "again"]) == 0
    path = tmp_path / "out" / "again" / "1.0.0"
    meta, first = (json.loads(open(os.path.join(p, lat_mod.MANIFEST)).read()) for p in (path, built))
    assert meta["vq_fingerprint"] == first["vq_fingerprint"] and meta["vq_weights"].endswith("run/model")
    again = {int(r["id"]): r["codes"] for r in _all(str(path))}
    for r in _all(built):
        np.testing.assert_array_equal(again[int(r["id"])], r["codes"])


@pytest.mark.slow   # one train step compiled on 8 devices
def test_training_on_codes_of_another_tokenizer_is_refused(built, shapes_dir, checkpoint, tmp_path, capsys):
    """The codes' manifest fingerprint against the run's frozen VQ: a warm start from the model
    that wrote them trains; one whose tokenizer has other weights of the same shape is refused
    before its first step."""
    def train(init, workdir):
        return main(["train", "--config", "tiny_janus_pro", "--workdir", str(workdir),
                     "--set", f"data.gen.name={built}", "--set", "data.gen.latents=true",
                     "--set", f"train.init_from={init}", "--set", "train.steps=1", "--set", "train.und_batch=0",
                     "--set", "train.text_batch=0", "--set", "train.gen_batch=8", "--set", "synthetic_data=false",
                     "--set", "train.mesh.data=-1"])
    assert train(checkpoint, tmp_path / "ok") == 0, capsys.readouterr()
    model, saved = load_model(checkpoint)
    state = nnx.state(model.gen_vision, nnx.Param)
    pure = nnx.to_pure_dict(state)
    leaf = jax.tree.leaves(pure)[0]
    nnx.replace_by_pure_dict(state, jax.tree.map(lambda x: x * 1.001 if x is leaf else x, pure))
    nnx.update(model.gen_vision, state)
    other = save_model(str(tmp_path / "other"), model, saved)
    capsys.readouterr()
    assert train(other, tmp_path / "bad") == 1
    err = capsys.readouterr().err
    assert "its codes were written by another VQ tokenizer" in err and not (tmp_path / "bad" / "model").exists(), err
