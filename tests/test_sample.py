"""Rectified-flow sampling: prompt cache == recompute, CFG mix and unconditional rows, seeds and
explicit noise, padding/batching invariance, mesh sharding, bad inputs, and the CLI (streaming,
skip-existing, latents) on a tiny checkpoint."""

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from janusflow.configs import presets
from janusflow.perf.bench_sample import random_model
from janusflow.cli.main import main as cli_main
from janusflow.models.vae import make_vae
from janusflow.objectives import flow
from janusflow.objectives.cfg_dropout import uncond_prompt_mask
from janusflow.sample.generate import generate, initial_noise, iter_generate, latent_shape, max_prompt_len

# tiny, trimmed further: compile time dominates these tests
_T = presets.tiny()
CFG = presets.tiny(llm=dataclasses.replace(_T.llm, num_layers=2), repa_layer=1,
                   gen_codec=dataclasses.replace(_T.gen_codec, num_blocks=1))
P_SHORT = [1, 17, 23, 99]
P_LONG = [1, 40, 41, 42, 43, 44, 45, 46, 47]
STEPS = 2


@pytest.fixture(scope="module")
def model():
    return random_model(CFG, seed=0, std=0.05)


@pytest.fixture(scope="module")
def vae():
    return make_vae(CFG.vae, rngs=nnx.Rngs(0))


def _latents(model, prompts, **kw):
    kw.setdefault("steps", STEPS)
    kw.setdefault("progress", False)
    return generate(model, None, CFG, prompts, return_latents=True, **kw)


@functools.partial(jax.jit, static_argnames="graphdef")
def _mixed_velocity(graphdef, state, ids, z, t, w):
    """Conditional and unconditional velocities from two separate uncached calls, mixed here."""
    model = nnx.merge(graphdef, state)
    mask = jnp.ones(ids.shape, bool)
    emb = model.language_model.embed(ids)
    tb = jnp.full((ids.shape[0],), t, jnp.float32)
    v_c = model.generate_velocity(emb, mask, z, tb).velocity
    v_u = model.generate_velocity(emb, uncond_prompt_mask(mask), z, tb).velocity
    return w * v_c - (w - 1) * v_u


def _reference(model, prompt, z0, w, steps, solver="euler"):
    """Independent integration of one prompt: no padding, no cache, Python loop."""
    assert int(uncond_prompt_mask(jnp.ones((1, len(prompt)), bool)).sum()) == 1   # BOS only
    graphdef, state = nnx.split(model)
    ids = jnp.asarray([prompt], jnp.int32)

    def velocity(z, t):
        return _mixed_velocity(graphdef, state, ids, z, t, jnp.float32(w))

    ts, dt = flow.time_grid(steps)
    z = jnp.asarray(z0)[None]
    for k in range(steps):
        if solver == "euler":
            z, _ = flow.euler_step(z, velocity(z, ts[k]), ts[k], dt)
        else:
            z, _ = flow.heun_step(z, ts[k], dt, velocity)
    return np.asarray(z[0])


def test_cached_equals_uncached(model):
    prompts = [P_SHORT, P_LONG]           # different lengths: left padding is exercised too
    cached = _latents(model, prompts, use_cache=True)
    uncached = _latents(model, prompts, use_cache=False)
    assert cached.shape == (2,) + latent_shape(CFG) and cached.dtype == np.float32
    assert np.isfinite(cached).all()
    assert np.abs(cached - uncached).max() < 1e-4
    # the result actually moved away from the noise and depends on the prompt
    z0 = np.asarray(initial_noise(CFG, 0, [0, 1]))
    assert np.abs(cached - z0).max() > 1e-2


def test_guidance_matches_independent_integration(model):
    z0 = np.asarray(initial_noise(CFG, 5, [0]))[0]
    for w in (1.0, 3.0):
        ours = _latents(model, [P_LONG], cfg_weight=w, noise=z0[None])[0]
        ref = _reference(model, P_LONG, z0, w, STEPS)
        assert np.abs(ours - ref).max() < 1e-4, w
    # w = 1 is the conditional velocity alone; w = 3 must differ (the unconditional rows matter)
    g1 = _latents(model, [P_LONG], cfg_weight=1.0, noise=z0[None])
    g3 = _latents(model, [P_LONG], cfg_weight=3.0, noise=z0[None])
    assert np.abs(g1 - g3).max() > 1e-3


def test_heun_matches_reference(model):
    z0 = np.asarray(initial_noise(CFG, 2, [0]))[0]
    ours = _latents(model, [P_SHORT], cfg_weight=2.0, noise=z0[None], solver="heun")[0]
    ref = _reference(model, P_SHORT, z0, 2.0, STEPS, solver="heun")
    assert np.abs(ours - ref).max() < 1e-4
    euler = _latents(model, [P_SHORT], cfg_weight=2.0, noise=z0[None])[0]
    assert np.abs(ours - euler).max() > 1e-4


def test_seed_and_explicit_noise(model, vae):
    a = generate(model, vae, CFG, [P_SHORT], steps=STEPS, seed=3, num_samples=2, progress=False)
    b = generate(model, vae, CFG, [P_SHORT], steps=STEPS, seed=3, num_samples=2, progress=False)
    assert a.shape == (2, CFG.image_size, CFG.image_size, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[0], a[1])                  # two samples of one prompt differ
    c = generate(model, vae, CFG, [P_SHORT], steps=STEPS, seed=4, num_samples=2, progress=False)
    assert not np.array_equal(a, c)
    n1 = np.asarray(initial_noise(CFG, 10, [0, 1]))
    n2 = np.asarray(initial_noise(CFG, 11, [0, 1]))
    x1 = generate(model, vae, CFG, [P_SHORT], steps=STEPS, noise=n1, seed=0, num_samples=2, progress=False)
    x1b = generate(model, vae, CFG, [P_SHORT], steps=STEPS, noise=n1, seed=99, num_samples=2, progress=False)
    x2 = generate(model, vae, CFG, [P_SHORT], steps=STEPS, noise=n2, seed=0, num_samples=2, progress=False)
    np.testing.assert_array_equal(x1, x1b)                 # explicit noise overrides the seed
    assert not np.array_equal(x1, x2)


def test_batching_and_padding_do_not_change_images(model):
    prompts = [P_SHORT, P_LONG, [1, 5], P_LONG[:6], [1, 7, 8, 9, 10]]
    chunks = list(iter_generate(model, None, CFG, prompts, steps=STEPS, seed=1, decode=False,
                                batch_size=2))
    assert [len(idx) for idx, _, _ in chunks] == [2, 2, 1]       # streamed, at most 2 in flight
    assert sorted(i for idx, _, _ in chunks for i in idx) == list(range(5))
    for idx, z, images in chunks:
        assert images is None
        for j, i in enumerate(idx):
            # each prompt alone (no padding partner, its own batch) gives the same latent
            alone = _latents(model, [prompts[i]], noise=initial_noise(CFG, 1, [i]))[0]
            assert np.abs(z[j] - alone).max() < 1e-4, i


@pytest.mark.skipif(jax.device_count() < 2, reason="needs 2 (simulated) devices; conftest sets XLA_FLAGS")
def test_sharded_over_mesh_equals_single_device(model):
    from janusflow.configs.schema import MeshConfig
    from janusflow.parallel.mesh import make_mesh
    mesh = make_mesh(MeshConfig(data=-1), devices=jax.devices()[:2])
    prompts = [P_SHORT, P_LONG]
    single = _latents(model, prompts, seed=2)
    sharded = _latents(model, prompts, seed=2, mesh=mesh)
    assert np.abs(single - sharded).max() < 1e-4


def test_bad_inputs(model, vae):
    def run(prompts, **kw):
        kw.setdefault("steps", 1)
        return generate(model, vae, CFG, prompts, progress=False, **kw)
    with pytest.raises(ValueError, match="prompt_ids is empty"):
        run([])
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        run([P_SHORT, []])
    too_long = [1] * (max_prompt_len(CFG) + 1)
    with pytest.raises(ValueError, match=r"prompt 0 has \d+ tokens.*context"):
        run([too_long])
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        run([P_SHORT], steps=0)
    with pytest.raises(ValueError, match="cfg_weight"):
        run([P_SHORT], cfg_weight=-1.0)
    with pytest.raises(ValueError, match="solver"):
        run([P_SHORT], solver="rk4")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        run([[1, CFG.llm.vocab_size]])
    with pytest.raises(ValueError, match="noise must have shape"):
        run([P_SHORT], noise=np.zeros((2,) + latent_shape(CFG), np.float32))
    with pytest.raises(ValueError, match="needs a VAE"):
        generate(model, None, CFG, [P_SHORT], steps=1, progress=False)


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    """The test model saved as a native checkpoint, with a tiny tokenizer beside it."""
    from janusflow.checkpoint import model_io
    from janusflow.data.tokenizer import build_tiny_tokenizer
    ckpt = model_io.save_model(str(tmp_path_factory.mktemp("sample") / "ckpt"), model, CFG)
    tok = build_tiny_tokenizer(["a red circle", "a blue square left of a circle"] * 10,
                               vocab_size=CFG.llm.vocab_size)
    tok.save(os.path.join(ckpt, "tokenizer.json"))
    return ckpt, tok


def test_cli_sample_streams_and_skips_existing(model, checkpoint, tmp_path, capsys):
    ckpt, _ = checkpoint
    out = str(tmp_path / "out")
    args = ["sample", "--checkpoint", ckpt, "--out", out, "--n", "2", "--steps", str(STEPS),
            "--batch-size", "2", "--prompt-ids", "1,17,23,99", "--prompt-ids", "1,40,41",
            "--save-latents", "--no-progress"]
    assert cli_main(args) == 0
    names = [f"{p:05d}_{s:02d}" for p in range(2) for s in range(2)]
    for n in names:
        assert os.path.isfile(os.path.join(out, n + ".png")) and os.path.isfile(os.path.join(out, n + ".npy"))
    assert os.path.isfile(os.path.join(out, "grid.png"))
    assert "4 images written, 0 already there" in capsys.readouterr().out
    # the saved latents are those of the Python API with the same noise
    lat = np.load(os.path.join(out, "00001_01.npy"))
    ref = generate(model, None, CFG, [[1, 40, 41]], steps=STEPS, return_latents=True, progress=False,
                   noise=initial_noise(CFG, 0, [3]))[0]
    assert np.abs(lat - ref).max() < 1e-4
    before = {}
    for n in ("00000_01", "00001_00"):
        with open(os.path.join(out, n + ".png"), "rb") as fh:
            before[n] = fh.read()
        os.remove(os.path.join(out, n + ".png"))
    assert cli_main(args) == 0
    assert "2 images written, 2 already there" in capsys.readouterr().out
    for n, data in before.items():
        with open(os.path.join(out, n + ".png"), "rb") as fh:
            assert fh.read() == data                          # resumed image == original image
    assert cli_main(args[:-1] + ["--cfg", "3", "--no-progress"]) == 1
    assert "other settings" in capsys.readouterr().err
    assert cli_main(["sample", "--checkpoint", ckpt, "--out", out, "--prompt-ids", "1,2",
                     "--steps", "0"]) == 1
    assert "steps must be" in capsys.readouterr().err


def test_cli_sample_text_prompts(model, vae, checkpoint, tmp_path, capsys):
    from PIL import Image

    from janusflow.data.tokenizer import generation_prompt_ids
    ckpt, tok = checkpoint
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("a red circle\n\na blue square\n")
    out = str(tmp_path / "out")
    assert cli_main(["sample", "--checkpoint", ckpt, "--out", out, "--n", "1", "--steps", str(STEPS),
                     "--prompts-file", str(prompts_file), "--no-progress"]) == 0
    assert "2 images written" in capsys.readouterr().out
    ids = [generation_prompt_ids(tok, p, CFG.head) for p in ("a red circle", "a blue square")]
    ref = generate(model, vae, CFG, ids, steps=STEPS, noise=initial_noise(CFG, 0, [0, 1]),
                   pad_id=tok.pad_id, progress=False)
    for i in range(2):   # the CLI shards over the 8 simulated devices: allow 1/255 of rounding
        png = np.asarray(Image.open(os.path.join(out, f"{i:05d}_00.png"))).astype(int)
        assert np.abs(png - ref[i]).max() <= 1
    with open(os.path.join(out, "prompts.jsonl")) as fh:
        assert fh.read().splitlines()[1] == '{"index": 1, "prompt": "a blue square"}'
    assert cli_main(["sample", "--checkpoint", ckpt, "--out", out, "--prompt", "  "]) == 1
    assert "prompt 0 is empty" in capsys.readouterr().err


def test_cli_sample_refuses_an_out_dir_made_by_another_model(model, checkpoint, tmp_path, capsys):
    import json
    import shutil

    from janusflow.checkpoint import model_io
    ckpt, _ = checkpoint
    out = str(tmp_path / "out")
    args = ["sample", "--out", out, "--n", "1", "--steps", str(STEPS), "--prompt-ids", "1,17,23",
            "--no-progress"]
    assert cli_main(args + ["--checkpoint", ckpt]) == 0
    rec = json.load(open(os.path.join(out, "sample_config.json")))["model"]
    assert rec["checkpoint"] == os.path.abspath(ckpt) and len(rec["fingerprint"]) == 64
    before = open(os.path.join(out, "00000_00.png"), "rb").read()
    capsys.readouterr()
    other = model_io.save_model(str(tmp_path / "other"), random_model(CFG, seed=1, std=0.05), CFG)
    assert cli_main(args + ["--checkpoint", other]) == 1
    err = capsys.readouterr().err
    assert "made with another model" in err and "sample_config.json" in err
    assert open(os.path.join(out, "00000_00.png"), "rb").read() == before      # nothing touched
    copy = shutil.copytree(ckpt, str(tmp_path / "copy"))       # same weights elsewhere: same model
    assert cli_main(args + ["--checkpoint", copy]) == 0
    assert "0 images written, 1 already there" in capsys.readouterr().out


def test_cli_sample_garbage_output_image_is_made_again_and_kept(checkpoint, tmp_path, capsys):
    ckpt, _ = checkpoint
    out = tmp_path / "out"
    args = ["sample", "--checkpoint", ckpt, "--out", str(out), "--n", "2", "--steps", str(STEPS),
            "--prompt-ids", "1,17,23", "--no-progress"]
    assert cli_main(args) == 0
    good = (out / "00000_00.png").read_bytes()
    (out / "00000_00.png").write_bytes(b"not a png at all")
    from PIL import Image
    Image.new("RGB", (5, 7)).save(out / "00000_01.png")           # an image, but not a sample
    capsys.readouterr()
    assert cli_main(args) == 0
    cap = capsys.readouterr()
    assert "2 images written, 0 already there" in cap.out
    lines = [ln for ln in cap.err.splitlines() if "not a readable sample" in ln]
    assert len(lines) == 2 and "Traceback" not in cap.err
    assert (out / "00000_00.png").read_bytes() == good                    # same noise, same image
    assert (out / "00000_00.png.unreadable").read_bytes() == b"not a png at all"   # kept, not deleted
    assert Image.open(out / "00000_01.png.unreadable").size == (5, 7)
    assert (out / "grid.png").is_file()
