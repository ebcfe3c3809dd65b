"""The training run's VAE: the pretrained diffusers AutoencoderKL named by train.vae_from goes
into the train state; a run whose images would pass through a random KL VAE is refused; the
1.3B experiment refuses to start without its data named."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from janusflow.cli import main as cli
from janusflow.configs import presets
from janusflow.checkpoint.torch_layout import export_state_dict
from janusflow.configs.schema import ConfigError, ExperimentConfig, MeshConfig, OptimConfig, TrainConfig
from janusflow.configs.data import DataConfig
from janusflow.configs.data import SourceConfig
from janusflow.checkpoint.key_maps import vae_key_map as torch_key_map
from janusflow.parallel.mesh import make_mesh
from janusflow.train import loop
from janusflow.train.state import init_state, merge_vae, random_vae_params
from janusflow.train.vae_source import check_vae_source, initial_vae, streams_through_vae

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# the smallest model with a KL VAE: no SigLIP, one LLM layer (the init's compile time grows
# with the number of parameters)
SMALL = dict(repa=False, und_encoder="none", llm=dataclasses.replace(presets.tiny().llm, num_layers=1), repa_layer=1)


def _cfg(model=None, **train_kw):
    base = dict(stage=2, steps=2, und_batch=0, gen_batch=2, text_batch=0, log_every=1, ckpt_every=2,
                optim=OptimConfig(lr=1e-3, warmup_steps=1), mesh=MeshConfig(data=1))
    base.update(train_kw)
    return ExperimentConfig(name="vae", model=model or presets.tiny_kl(repa=False, vae_random_ok=False),
                            seq_len=256, train=TrainConfig(**base), synthetic_data=True)


def _diffusers_dir(tmp_path, vcfg, seed=0):
    """A diffusers AutoencoderKL with random weights (norms and biases too), saved as a
    directory the way `save_pretrained` writes the SDXL-VAE."""
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    n = len(vcfg.block_out_channels)
    torch.manual_seed(seed)
    ref = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(vcfg.block_out_channels),
        layers_per_block=vcfg.layers_per_block, latent_channels=vcfg.latent_channels,
        norm_num_groups=vcfg.norm_num_groups, scaling_factor=vcfg.scaling_factor).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    d = str(tmp_path / "sdxl_vae")
    ref.save_pretrained(d, safe_serialization=True)
    return d, {k: v.detach().numpy() for k, v in ref.state_dict().items()}


def test_vae_from_puts_the_diffusers_weights_into_the_state(tmp_path):
    cfg = _cfg(model=presets.tiny_kl(**SMALL, vae_random_ok=False))
    d, sd = _diffusers_dir(tmp_path, cfg.model.vae)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, vae_from=d))
    mesh = make_mesh(cfg.train.mesh, devices=jax.devices()[:1])
    parts, state, _ = init_state(cfg, mesh, initial_vae(cfg, log=lambda *_: None))
    got = export_state_dict(merge_vae(parts, jax.device_get(state.vae)), torch_key_map(cfg.model.vae))
    assert set(got) == set(sd)
    for k in sd:
        np.testing.assert_array_equal(got[k], sd[k], err_msg=k)
    # and not what a fresh run would have drawn
    rand = export_state_dict(merge_vae(parts, random_vae_params(cfg)), torch_key_map(cfg.model.vae))
    assert not np.array_equal(rand["encoder.conv_in.weight"], sd["encoder.conv_in.weight"])


def test_vae_dir_of_another_architecture_is_one_line(tmp_path):
    cfg = _cfg()
    other = dataclasses.replace(cfg.model.vae, latent_channels=8)
    d, _ = _diffusers_dir(tmp_path, other)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, vae_from=d))
    with pytest.raises(ConfigError, match=r"train.vae_from=.*differs .* in latent_channels \(8 vs 4\)"):
        initial_vae(cfg)
    bad = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, vae_from=str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match="no diffusers AutoencoderKL directory"):
        initial_vae(bad)


def test_random_vae_is_one_stream_for_fresh_and_warm_starts():
    """Fresh init and the warm start (and `data latents`) build the same random VAE, from its
    own stream: the model's init does not move it."""
    cfg = _cfg(model=presets.tiny_kl(**SMALL))
    mesh = make_mesh(cfg.train.mesh, devices=jax.devices()[:1])
    _, state, _ = init_state(cfg, mesh)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.vae), jax.device_get(random_vae_params(cfg)))
    deeper = dataclasses.replace(cfg, model=presets.tiny_kl(repa=False))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(random_vae_params(deeper)),
                 jax.device_get(state.vae))


def test_vae_dtype_bfloat16_computes_in_bf16_from_fp32_weights():
    cfg = _cfg(model=presets.tiny_kl(repa=False), vae_dtype="bfloat16")
    mesh = make_mesh(cfg.train.mesh, devices=jax.devices()[:1])
    from janusflow.train.state import state_shardings
    parts, abstract, _ = state_shardings(cfg, mesh)
    assert {x.dtype for x in jax.tree.leaves(abstract.vae)} == {jnp.dtype(jnp.float32)}
    vae = merge_vae(parts, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract.vae))
    mean, _ = nnx.eval_shape(lambda v, x: v.encode(x), vae, jnp.zeros((1, 32, 32, 3)))
    assert mean.dtype == jnp.bfloat16
    with pytest.raises(ConfigError, match="TrainConfig.vae_dtype"):
        TrainConfig(vae_dtype="float16")


def test_random_kl_vae_is_refused_unless_said_so():
    cfg = _cfg()
    with pytest.raises(ConfigError, match=r"data.gen images would be encoded by a randomly initialised VAE"):
        check_vae_source(cfg)
    und = _cfg(model=presets.tiny_kl(repa=False, vae_random_ok=False, und_encoder="shared_gen"), und_batch=2)
    with pytest.raises(ConfigError, match=r"data.gen and data.und images"):
        check_vae_source(und)
    # precomputed latents, an explicit yes, or a named VAE pass; the pixel VAE has no weights
    latents = dataclasses.replace(cfg, data=DataConfig(gen=SourceConfig(name="x", latents=True)))
    check_vae_source(latents)
    check_vae_source(_cfg(model=presets.tiny_kl(repa=False)))           # the preset says yes
    check_vae_source(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, vae_from="/some/dir")))
    check_vae_source(_cfg(model=presets.tiny(repa=False)))
    with pytest.raises(ConfigError, match="model.vae.kind is 'pixel'"):
        check_vae_source(_cfg(model=presets.tiny(repa=False), vae_from="/some/dir"))
    # Janus-Pro: the released presets keep a KL VAE config, but generation images go through
    # the VQ tokenizer, so a run fed images needs no VAE
    pro = _cfg(model=presets.janus_pro_1b())
    assert streams_through_vae(pro) == []
    check_vae_source(pro)


def test_cli_train_refuses_random_vae_before_touching_the_workdir(tmp_path, capsys):
    wd = tmp_path / "run"
    rc = cli.main(["train", "--config", "tiny_kl", "--workdir", str(wd), "--set", "model.vae_random_ok=false",
                   "--set", "synthetic_data=true"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "randomly initialised VAE" in err and "--vae DIR" in err
    assert not wd.exists()
    with pytest.raises(ConfigError, match="randomly initialised"):   # the Python API refuses too
        loop.train(_cfg(), str(wd), log=lambda *_: None)
    assert not wd.exists()


def test_1_3b_experiment_refuses_to_start_without_its_data_named(tmp_path, capsys):
    wd = tmp_path / "run"
    spec = os.path.join(REPO, "experiments/janusflow_1_3b.py:stage=2")
    # the VAE first (its images would go through a random SDXL-VAE) ...
    assert cli.main(["train", "--config", spec, "--workdir", str(wd)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "randomly initialised VAE" in err
    # ... then the data: no dataset named, no silent toy set
    assert cli.main(["train", "--config", spec, "--workdir", str(wd), "--set", "data.gen.latents=true"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data.und.name is empty" in err and "--set data.und.name=" in err
    assert not wd.exists()
