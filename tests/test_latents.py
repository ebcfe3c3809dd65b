"""Precomputed VAE latents: the step with latents == the step encoding images, `janusflow data
latents` round trip, the pipeline reading them, refused mismatches, and the encoder FLOPs."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import nnx

from janusflow.perf import flops
from janusflow.configs import presets
from janusflow.cli.main import main
from janusflow.configs.schema import ExperimentConfig, OptimConfig, TrainConfig
from janusflow.data import latents as lat_mod
from janusflow.data import preprocess as pp
from janusflow.configs.data import DataConfig
from janusflow.data.pipeline import make_pipeline, shapes_tokenizer
from janusflow.shapes.dataset import build_shapes, shapes_config
from janusflow.configs.data import SourceConfig
from janusflow.data.sources import open_source
from janusflow.models.vae import encode_latents, make_vae
from janusflow.parallel.mesh import make_mesh
from janusflow.train.state import make_init, merge_vae, state_shardings
from janusflow.train.step import jit_train_step
from janusflow.train.synthetic import synthetic_batch

N_TRAIN = 12


@pytest.fixture(autouse=True)
def _no_default_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("JANUSFLOW_DATA_DIR", str(tmp_path / "default_data_dir"))


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    tfds.disable_progress_bar()
    return build_shapes(str(tmp_path_factory.mktemp("tfds")), shapes_config(32, N_TRAIN, 4))


def _cfg(model=None, und=0, gen=4, text=0, data=DataConfig()):
    return ExperimentConfig(name="lat", model=model or presets.tiny_kl(), seq_len=256,
                            train=TrainConfig(stage=2, und_batch=und, gen_batch=gen, text_batch=text,
                                              optim=OptimConfig(lr=1e-3, warmup_steps=1)),
                            data=data)


def _one_device(cfg):
    mesh = make_mesh(dataclasses.replace(cfg.train.mesh, data=1), devices=jax.devices()[:1])
    parts, abstract, sh = state_shardings(cfg, mesh)
    return mesh, parts, sh, abstract


# Compiles dominate this file's time, so one model serves every test that needs a train state:
# ablation B (understanding reuses the gen encoder) exercises both `latents` and `vae_latents`.
MODEL = presets.tiny_kl(und_encoder="shared_gen")
MODEL_ARGS = ["--config", "tiny_kl", "--set", "model.und_encoder=shared_gen"]


@pytest.fixture(scope="module")
def kl():
    """(cfg, mesh, parts, shardings, fresh-state factory) of MODEL, compiled once."""
    cfg = _cfg(MODEL, und=2, gen=4)
    mesh, parts, sh, _ = _one_device(cfg)
    init = make_init(cfg, parts, sh)

    def fresh():
        with jax.set_mesh(mesh):
            return init()
    return cfg, mesh, parts, sh, fresh


# ---------------------------------------------------------------------- the step
@pytest.mark.slow   # compiles two KL-VAE train steps
def test_step_with_precomputed_latents_equals_encoding_in_the_step(kl):
    cfg, mesh, parts, sh, fresh = kl
    images = synthetic_batch(cfg, seed=1)
    vae = merge_vae(parts, fresh().vae)
    enc = jax.jit(lambda x: encode_latents(vae, cfg.model.vae, x))
    latents = {t: dict(b) for t, b in images.items()}
    latents["gen"]["latents"] = enc(latents["gen"].pop("images"))
    latents["und"]["vae_latents"] = enc(latents["und"].pop("vae_images"))
    assert float(jnp.std(latents["gen"]["latents"])) > 0
    steps = {k: jit_train_step(cfg, parts, sh, mesh, b) for k, b in (("images", images), ("latents", latents))}
    out = {}
    for name, batch in (("images", images), ("latents", latents)):
        with jax.set_mesh(mesh):
            new, m = steps[name](fresh(), batch)
        out[name] = (jax.device_get(new.params), jax.device_get(m))
    (p_img, m_img), (p_lat, m_lat) = out["images"], out["latents"]
    assert bool(m_lat["finite"]) and m_img["loss_rf"] > 0 and m_img["loss_ar"] > 0
    for k in ("loss", "loss_ar", "loss_rf", "loss_repa", "grad_norm"):
        np.testing.assert_allclose(m_lat[k], m_img[k], rtol=1e-5, err_msg=k)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), p_lat, p_img)
    # the latents really are what the losses see: other latents, other losses
    other = {t: dict(b) for t, b in latents.items()}
    other["gen"]["latents"] = latents["gen"]["latents"] * 0.5
    other["und"]["vae_latents"] = latents["und"]["vae_latents"] * 0.5
    with jax.set_mesh(mesh):
        _, m_other = steps["latents"](fresh(), other)
    assert abs(float(m_other["loss_rf"]) - float(m_lat["loss_rf"])) > 1e-3
    assert abs(float(m_other["loss_ar"]) - float(m_lat["loss_ar"])) > 1e-6


def test_batch_without_images_or_latents_is_a_clear_error():
    cfg = _cfg(presets.tiny_kl(und_encoder="shared_gen"), und=2, gen=4)
    mesh, parts, sh, abstract = _one_device(cfg)

    def trace(batch):            # the errors come from tracing: nothing is compiled or run
        with jax.set_mesh(mesh):
            jit_train_step(cfg, parts, sh, mesh, batch).lower(abstract, batch)

    batch = synthetic_batch(cfg)
    del batch["gen"]["images"]
    with pytest.raises(ValueError, match="'images'.*'latents'"):
        trace(batch)
    batch["gen"]["latents"] = jnp.zeros((4, 8, 8, 3))          # wrong shape: both are named
    with pytest.raises(ValueError, match=r"precomputed latents have shape \(4, 8, 8, 3\), expected \(4, 16, 16, 4\)"):
        trace(batch)
    batch = synthetic_batch(cfg)
    del batch["und"]["vae_images"]
    with pytest.raises(ValueError, match="'vae_images'.*'vae_latents'"):
        trace(batch)


def test_synthetic_batch_follows_data_gen_latents():
    base = _cfg(gen=3)
    cfg = _cfg(gen=3, data=DataConfig(gen=SourceConfig(name="x", latents=True)))
    g = synthetic_batch(cfg)["gen"]
    m = cfg.model
    assert "images" not in g and g["latents"].shape == (3, m.latent_size, m.latent_size, m.vae.channels)
    assert "images" in synthetic_batch(base)["gen"]


# ---------------------------------------------------------------------- preprocessing + pipeline
@pytest.fixture(scope="module")
def built(shapes_dir, tmp_path_factory):
    """`janusflow data latents` over the shapes train split of the tiny_kl experiment."""
    out = tmp_path_factory.mktemp("latents")
    argv = ["data", "latents", *MODEL_ARGS, "--set", f"data.gen.name={shapes_dir}",
            "--out", str(out), "--batch", "5", "--name", "shapes_lat"]
    assert main(argv) == 0
    path = out / "shapes_lat" / "1.0.0"
    return str(path), argv


def _all(path):
    src = open_source(SourceConfig(name=path), "image")
    return [src[i] for i in range(len(src))]


def test_latents_command_round_trips_the_encoder_output_bit_exactly(built, shapes_dir, kl, capsys):
    path, argv = built
    cfg, _, parts, _, fresh = kl
    meta = json.loads(open(f"{path}/{lat_mod.MANIFEST}").read())
    assert meta["latent_shape"] == [16, 16, 4] and meta["vae"] == lat_mod.vae_fields(MODEL.vae)
    assert meta["splits"] == {"train": N_TRAIN} and meta["crop"] == "center"
    # the encoder is the VAE a fresh run of the experiment initialises (train/state.py)
    state = fresh()
    assert meta["vae_fingerprint"] == lat_mod.fingerprint(state.vae)
    gd, _ = nnx.split(merge_vae(parts, state.vae), nnx.Param)
    enc = jax.jit(lambda p, x: encode_latents(nnx.merge(gd, p), cfg.model.vae, x))
    # Re-encode the source in the command's order and batches of 5 (last one zero-padded):
    # what was stored and read back must be exactly the encoder's output.
    orig = _all(shapes_dir)
    want = {}
    for lo in range(0, N_TRAIN, 5):
        recs = orig[lo:lo + 5]
        x = [pp.to_vae(pp.resize_short_side_random_crop(pp.decode_image(r["image"]), 32, None)) for r in recs]
        x += [np.zeros((32, 32, 3), np.float32)] * (5 - len(x))
        for r, z in zip(recs, np.asarray(enc(state.vae, np.stack(x)))):
            want[int(r["id"])] = (r, z)
    got = _all(path)
    assert sorted(int(r["id"]) for r in got) == sorted(want) and len(got) == N_TRAIN
    for r in got:
        o, z = want[int(r["id"])]
        assert r["latents"].dtype == np.float32 and r["latents"].shape == (16, 16, 4)
        np.testing.assert_array_equal(r["latents"], z)
        assert r["image"] == o["image"]                        # copied bytes, not re-encoded
        assert r["caption"] == o["caption"] and list(r["qa"]["answer"]) == list(o["qa"]["answer"])
    # a second run into the same place is refused
    assert main(argv) == 1 and "already holds" in capsys.readouterr().err


def test_pipeline_yields_the_stored_latents_and_resumes(built):
    path, _ = built
    cfg = _cfg(MODEL, gen=4)
    data = DataConfig(gen=SourceConfig(name=path, latents=True), num_threads=0, seed=2)
    tok = shapes_tokenizer(512)
    it = make_pipeline(cfg, data, tok, process_index=0, process_count=1)
    stored = {int(r["id"]): r for r in _all(path)}
    batches = [next(it) for _ in range(4)]          # 16 > 12 examples: crosses an epoch
    ref = synthetic_batch(cfg, latents=True)["gen"]
    for b in batches:
        g = b["gen"]
        assert set(g) == set(ref) and "images" not in g
        for k in ref:
            assert g[k].dtype == ref[k].dtype and g[k].shape[0] == 4, k
            if g[k].ndim == 4:
                assert g[k].shape == ref[k].shape, k
        for row in range(4):
            match = [i for i, r in stored.items() if np.array_equal(r["latents"], g["latents"][row])]
            assert len(match) == 1                                  # bit-exact, one record
            img = pp.decode_image(stored[match[0]]["image"])      # REPA sees the same crop
            sig = cfg.model.siglip
            np.testing.assert_array_equal(g["repa_pixels"][row], pp.to_siglip(img, sig.pixel_mean, sig.pixel_std))
    state = json.loads(json.dumps(it.get_state()))
    after = next(it)
    again = make_pipeline(cfg, data, tok, process_index=0, process_count=1)
    again.set_state(state)
    resumed = next(again)
    assert all(np.array_equal(after["gen"][k], resumed["gen"][k]) for k in after["gen"])


def test_mismatched_vae_or_shape_is_refused_naming_the_field(built, shapes_dir):
    path, _ = built
    tok = shapes_tokenizer(512)
    data = DataConfig(gen=SourceConfig(name=path, latents=True), num_threads=0)
    base = presets.tiny_kl()
    other = dataclasses.replace(base, vae=dataclasses.replace(base.vae, scaling_factor=0.5))
    with pytest.raises(ValueError, match=r"vae\.scaling_factor: latents 1\.0 vs model 0\.5"):
        make_pipeline(_cfg(other), data, tok, process_index=0, process_count=1)
    wide = dataclasses.replace(base, vae=dataclasses.replace(base.vae, latent_channels=8))
    with pytest.raises(ValueError, match=r"latent_shape: latents \[16, 16, 4\] vs model \[16, 16, 8\]"):
        make_pipeline(_cfg(wide), data, tok, process_index=0, process_count=1)
    # an image dataset named as latents, and latents on the und stream
    with pytest.raises(ValueError, match="not a latents dataset"):
        make_pipeline(_cfg(), DataConfig(gen=SourceConfig(name=shapes_dir, latents=True)), tok,
                      process_index=0, process_count=1)
    with pytest.raises(ValueError, match="only the gen stream"):
        DataConfig(und=SourceConfig(name=path, latents=True))
    with pytest.raises(ValueError, match="already a latents dataset"):
        lat_mod.build_latents(_cfg(data=DataConfig(gen=SourceConfig(name=path, latents=True))), "/nonexistent")


def test_set_override_reaches_the_source_config():
    from janusflow.configs.loader import apply_overrides, load_config
    cfg = apply_overrides(load_config("tiny"), ["data.gen.latents=true", "data.gen.name=/some/dir"])
    assert cfg.data.gen.latents is True and cfg.data.gen.name == "/some/dir"


# ---------------------------------------------------------------------- FLOPs
def _xla_encode_flops(model_cfg, batch=2):
    vae = nnx.eval_shape(lambda: make_vae(model_cfg.vae, rngs=nnx.Rngs(0)))
    gd, st = nnx.split(vae)
    f = jax.jit(lambda s, x: encode_latents(nnx.merge(gd, s), model_cfg.vae, x))
    s = model_cfg.image_size
    cost = f.lower(st, jax.ShapeDtypeStruct((batch, s, s, 3), jnp.float32)).compile().cost_analysis()
    return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]) / batch


@pytest.mark.parametrize("size,vae", [
    (64, {}), (128, {}),
    (64, {"layers_per_block": 2, "block_out_channels": (16, 32, 64)}),
    (64, {"mid_block_add_attention": False, "use_quant_conv": False}),
])
def test_vae_encoder_flops_match_xla_cost_analysis(size, vae):
    # XLA counts a conv's multiply-adds over the valid (non-padding) taps only, which at small
    # resolutions is a few % below k*k per pixel, and adds the elementwise ops (GroupNorm,
    # SiLU, softmax) the analytic count leaves out (+1-3%). Measured: 0.98-1.02 on these tiny
    # VAEs, 0.993 for the SDXL-VAE at 384 px. 5% separates that from a missing/extra layer
    # (removing one resnet of the first level changes the count by > 20%).
    m = presets.tiny_kl(image_size=size, repa=False)
    m = dataclasses.replace(m, vae=dataclasses.replace(m.vae, **vae))
    analytic, xla = flops.vae_encode_forward_per_image(m), _xla_encode_flops(m)
    assert analytic == pytest.approx(xla, rel=0.05), (analytic, xla)


def test_encoder_flops_per_step_count_only_images_encoded_in_the_step():
    cfg = _cfg(gen=3)
    per = flops.vae_encode_forward_per_image(cfg.model)
    assert per > 0 and flops.vae_encode_forward_per_image(presets.tiny()) == 0.0    # pixel VAE
    assert flops.train_step_vae_encode_flops(cfg, synthetic_batch(cfg)) == 3 * per
    assert flops.train_step_vae_encode_flops(cfg, synthetic_batch(cfg, latents=True)) == 0.0
    # SDXL-VAE at 384 px (the 1.3B model): 0.62 TFLOP per image, ~44% of the decoder
    big = presets.janusflow_1_3b()
    assert flops.vae_encode_forward_per_image(big) == pytest.approx(619.66e9, rel=1e-3)
