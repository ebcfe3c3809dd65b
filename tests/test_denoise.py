"""The one-step denoising grid (shapes/denoise.py): x_hat = z_t + (1-t) v at several t."""

import os

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import nnx

from janusflow.configs import presets
from janusflow.shapes import denoise

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _xz(n=3, s=4):
    rng = np.random.default_rng(0)
    return (jnp.asarray(rng.uniform(-1, 1, (n, s, s, 3)), jnp.float32),
            jnp.asarray(rng.standard_normal((n, s, s, 3)), jnp.float32))


def test_x_hat_is_the_image_for_the_true_velocity_and_z_t_for_zero_velocity():
    x, z0 = _xz()
    seen = []

    def oracle(zt, t):   # the rectified-flow target x - z0 (independent of z_t and t)
        seen.append(np.asarray(t))
        return x - z0

    rows = denoise.denoise_rows(oracle, x, z0, ts=(0.1, 0.5, 0.9))
    assert [t for t, _, _ in rows] == [0.1, 0.5, 0.9]
    for (t, zt, xh), tt in zip(rows, seen):
        np.testing.assert_allclose(zt, t * x + (1 - t) * z0, atol=1e-6)
        np.testing.assert_allclose(xh, x, atol=1e-5)
        assert tt.shape == (3,) and np.all(tt == np.float32(t))
    for t, zt, xh in denoise.denoise_rows(lambda zt, t: jnp.zeros_like(zt), x, z0, ts=(0.3,)):
        np.testing.assert_array_equal(xh, zt)


def test_bad_t_and_mismatched_shapes_are_refused():
    x, z0 = _xz()
    with pytest.raises(ValueError, match="t must be in"):
        denoise.denoise_rows(lambda zt, t: zt, x, z0, ts=(1.0,))
    with pytest.raises(ValueError, match="same shape"):
        denoise.denoise_rows(lambda zt, t: zt, x, z0[:2])


def test_grid_puts_the_clean_images_on_top_and_each_z_t_beside_its_x_hat():
    x, z0 = _xz(n=2, s=4)
    rows = [(0.5, np.full((2, 4, 4, 3), -1.0), np.full((2, 4, 4, 3), 1.0))]
    g = denoise.grid(np.asarray(x), rows, pad=2)
    assert g.shape == (2 * 6 + 2, 2 * (2 * 4 + 2 + 4) + 2, 3) and g.dtype == np.uint8
    np.testing.assert_array_equal(g[2:6, 2:6], denoise._to_uint8(x[0]))     # clean, example 0
    np.testing.assert_array_equal(g[2:6, 8:12], denoise._to_uint8(x[0]))    # clean beside itself
    np.testing.assert_array_equal(g[2:6, 16:20], denoise._to_uint8(x[1]))   # example 1
    assert (g[8:12, 2:6] == 0).all() and (g[8:12, 8:12] == 255).all()       # z_t | x_hat of t=0.5


def test_cli_on_a_saved_tiny_model(tmp_path, capsys):
    from janusflow.checkpoint.model_io import save_model
    from janusflow.cli.main import main
    from janusflow.data.pipeline import shapes_tokenizer
    from janusflow.shapes.dataset import build_shapes, shapes_config
    from janusflow.models.janusflow import JanusFlow
    tfds.disable_progress_bar()
    path = build_shapes(str(tmp_path / "tfds"), shapes_config(32, 8, 8))
    cfg = presets.tiny()
    save_model(str(tmp_path / "m"), JanusFlow(cfg, rngs=nnx.Rngs(0)), cfg, shapes_tokenizer(cfg.llm.vocab_size))
    out = tmp_path / "d.png"
    args = ["eval", "denoise", "--checkpoint", str(tmp_path / "m"), "--config", os.path.join(ROOT, "experiments/shapes_tiny.py"),
            "--set", f"data.gen.name={path}", "--n", "3", "--t", "0.2,0.8", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "t=0.2:" in printed and "t=0.8:" in printed
    from PIL import Image
    img = np.asarray(Image.open(out))
    assert img.shape == (3 * 34 + 2, 3 * (2 * 32 + 2 + 4) + 2, 3)
    # the top row holds the real validation images: mostly the shapes world's gray background
    assert np.median(img[2:34, 2:34]) == 128
    before = out.read_bytes()
    assert main(args) == 2 and out.read_bytes() == before          # never replaced silently
    assert "exists" in capsys.readouterr().err
    assert main(args + ["--force"]) == 0


def test_trajectory_follows_euler_with_cfg_to_the_data_for_the_oracle_velocity():
    """With the straight-line velocity x - z0 the Euler path lands on x and every x_hat is x;
    the unconditional branch enters as w*v_c - (w-1)*v_u, so an unconditional velocity of
    zero scales the step by w (and the path overshoots to z0 + w (x - z0))."""
    x, z0 = _xz(n=2, s=4)
    calls = []

    def oracle(z, t, cond):
        calls.append(cond)
        return x - z0

    rows = denoise.trajectory_rows(oracle, z0, steps=5, cfg_weight=3.0, show=(0, 2, 4))
    assert [t for t, _, _ in rows] == pytest.approx([0.0, 0.4, 0.8, 1.0])
    np.testing.assert_allclose(rows[-1][1], x, atol=1e-5)
    for t, z, xh in rows:
        np.testing.assert_allclose(z, t * x + (1 - t) * z0, atol=1e-5)
        np.testing.assert_allclose(xh, x, atol=1e-5)
    assert calls.count(True) == calls.count(False) == 5
    end = denoise.trajectory_rows(lambda z, t, cond: (x - z0) if cond else jnp.zeros_like(z), z0, steps=4,
                                  cfg_weight=2.0, show=(0,))[-1][1]
    np.testing.assert_allclose(end, z0 + 2.0 * (x - z0), atol=1e-5)
    with pytest.raises(ValueError, match="show must list steps"):
        denoise.trajectory_rows(oracle, z0, steps=5, show=(5,))


def test_trajectory_cli_on_a_saved_tiny_model(tmp_path, capsys):
    from janusflow.checkpoint.model_io import save_model
    from janusflow.cli.main import main
    from janusflow.data.pipeline import shapes_tokenizer
    from janusflow.models.janusflow import JanusFlow
    cfg = presets.tiny()
    save_model(str(tmp_path / "m"), JanusFlow(cfg, rngs=nnx.Rngs(0)), cfg, shapes_tokenizer(cfg.llm.vocab_size))
    out = tmp_path / "tr.png"
    args = ["eval", "trajectory", "--checkpoint", str(tmp_path / "m"), "--out", str(out), "--steps", "4",
            "--show", "0,2", "--prompt", "a photo of a circle", "--prompt", "a photo of a red star"]
    assert main(args) == 0
    assert "t = 0, 0.5" in capsys.readouterr().out
    from PIL import Image
    img = np.asarray(Image.open(out))
    assert img.shape == (3 * 34 + 2, 2 * (2 * 32 + 2 + 4) + 2, 3)
    assert main(args) == 2   # an existing --out is kept unless --force


def test_trajectory_ends_where_the_sampler_ends():
    """The step-by-step trajectory integrates the same Euler + CFG ODE as the sampler's fused,
    prompt-cached program: same noise and prompts give the same final latents."""
    from janusflow.data.pipeline import shapes_tokenizer
    from janusflow.data.tokenizer import generation_prompt_ids
    from janusflow.models.janusflow import JanusFlow
    from janusflow.objectives.cfg_dropout import uncond_prompt_mask
    from janusflow.sample.generate import generate, pad_prompts
    cfg = presets.tiny()
    model = JanusFlow(cfg, rngs=nnx.Rngs(1))
    tok = shapes_tokenizer(cfg.llm.vocab_size)
    prompts = ["a photo of a red circle", "a photo of two stars"]
    ids = [generation_prompt_ids(tok, p, cfg.head) for p in prompts]
    z0 = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    ref = generate(model, None, cfg, ids, noise=z0, steps=4, cfg_weight=3.0, return_latents=True,
                   progress=False, pad_id=tok.pad_id)
    pid, pm = pad_prompts(ids, max(map(len, ids)), tok.pad_id)
    pid, pm = jnp.asarray(pid), jnp.asarray(pm)

    def vel(z, t, cond):
        mask = pm if cond else uncond_prompt_mask(pm)
        return model.generate_velocity(model.language_model.embed(pid), mask, z, t).velocity
    end = denoise.trajectory_rows(vel, z0, steps=4, cfg_weight=3.0, show=(0,))[-1][1]
    np.testing.assert_allclose(end, ref, atol=1e-4)
    assert np.abs(end - z0).max() > 0.1   # the model moved the state: the comparison is not vacuous
