"""Scanned layers (ModelConfig.scan_layers) against the unrolled blocks, and remat policies by name.

The parity tests of test_llm/test_siglip/test_janusflow/test_hf also run against the scanned
path with ``pytest --scan-layers`` (conftest.py)."""

import contextlib
import dataclasses
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh

from janusflow.configs import presets
from janusflow.checkpoint import hf
from janusflow.checkpoint.torch_layout import export_state_dict, flat_params, load_state_dict
from janusflow.configs.schema import REMAT_POLICIES, ConfigError
from janusflow.models import remat as remat_lib
from janusflow.models.gen_codec import GenEncoder
from janusflow.models.janusflow import JanusFlow
from janusflow.checkpoint.key_maps import llm_key_map as torch_key_map
from janusflow.checkpoint.key_maps import siglip_key_map
from janusflow.models.llm import LLM, KVCache
from janusflow.models.siglip import SiglipVisionTower
from janusflow.parallel.rules import param_shardings

TINY = presets.tiny()
LLM_CFG = TINY.llm


def _close(a, b, tol=2e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def _embeds(b=2, t=9, seed=1):
    return jax.random.normal(jax.random.key(seed), (b, t, LLM_CFG.hidden_size))


def test_same_seed_same_weights_and_stacked_axes():
    a, s = LLM(LLM_CFG, rngs=nnx.Rngs(0)), LLM(LLM_CFG, rngs=nnx.Rngs(0), scan=True)
    kern = s.layers.mlp.up_proj.kernel
    assert kern[...].shape == (LLM_CFG.num_layers, LLM_CFG.hidden_size, LLM_CFG.intermediate_size)
    assert kern.get_metadata()["axes"] == ("layers", "embed", "mlp")
    for i in range(LLM_CFG.num_layers):
        np.testing.assert_array_equal(np.asarray(kern[...][i]),
                                      np.asarray(a.layers[i].mlp.up_proj.kernel[...]))
    # the layer axis is never sharded
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(1, 8, 1), ("data", "fsdp", "tensor"))
    sh = param_shardings(nnx.state(s, nnx.Param), mesh)
    assert sh["layers"]["mlp"]["up_proj"]["kernel"].spec[0] is None
    assert sh["layers"]["mlp"]["up_proj"]["kernel"].spec[1] == "fsdp"


@pytest.mark.parametrize("remat", ["none", "full", "save_dot_except_mlp"])
def test_scanned_llm_equals_unrolled_outputs_cache_and_grads(remat):
    a = LLM(LLM_CFG, rngs=nnx.Rngs(0), remat=remat)
    s = LLM(LLM_CFG, rngs=nnx.Rngs(3), remat=remat, scan=True)
    # different seeds: the weights arrive through the checkpoint key map (stacking on import)
    load_state_dict(s, export_state_dict(a, torch_key_map(LLM_CFG)), torch_key_map(LLM_CFG))
    x = _embeds()
    mask = jnp.ones((2, 9), bool).at[0, :2].set(False)

    def run(m):
        full = m(x, attention_mask=mask, collect=(0, 1, 3, LLM_CFG.num_layers))
        part = m(x, attention_mask=mask, stop_after=2, collect=(2,))
        cache = KVCache.init(LLM_CFG, 2, 16)
        pre = m(x[:, :6], attention_mask=mask[:, :6], cache=cache)
        step = m(x[:, 6:], attention_mask=mask[:, 6:], cache=pre.cache, start=6)   # decode
        grads = nnx.grad(lambda m: jnp.sum(m(x, attention_mask=mask, collect=(1,)).layers[1] ** 2
                                           + m(x, attention_mask=mask).hidden ** 2))(m)
        return full, part, pre, step, grads

    fa, pa, prea, sta, ga = nnx.jit(run)(a)
    fs, ps, pres, sts, gs = nnx.jit(run)(s)
    _close(fa.hidden, fs.hidden)
    assert sorted(fs.layers) == [0, 1, 3, LLM_CFG.num_layers]
    _close(fa.layers, fs.layers)
    _close(pa.hidden, ps.hidden)
    _close(pa.layers, ps.layers)
    _close(prea.cache, pres.cache)
    _close((sta.hidden, sta.cache), (sts.hidden, sts.cache))
    # decoding with the cache continues the full forward pass
    _close(sts.hidden[1], fs.hidden[1, 6:], tol=1e-4)
    sd_a = export_state_dict(ga, torch_key_map(LLM_CFG))
    sd_s = export_state_dict(gs, torch_key_map(LLM_CFG))
    assert sd_a.keys() == sd_s.keys()
    _close(sd_a, sd_s, tol=1e-4)
    assert np.abs(sd_s["model.layers.0.mlp.up_proj.weight"]).max() > 0


def test_checkpoint_round_trips_between_scanned_and_unrolled():
    km = torch_key_map(LLM_CFG)
    a = LLM(LLM_CFG, rngs=nnx.Rngs(0))
    sd = export_state_dict(a, km)
    # into an abstract scanned model (what the HF loader builds), then back out
    s = nnx.eval_shape(lambda: LLM(LLM_CFG, rngs=nnx.Rngs(1), scan=True))
    load_state_dict(s, sd, km)
    assert isinstance(s.layers.self_attn.q_proj.kernel[...], jax.Array)
    back = export_state_dict(s, km)
    assert back.keys() == sd.keys()
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k], err_msg=k)
    # scanned -> unrolled
    u = LLM(LLM_CFG, rngs=nnx.Rngs(2))
    load_state_dict(u, back, km)
    for k, v in export_state_dict(u, km).items():
        np.testing.assert_array_equal(v, sd[k], err_msg=k)
    # bf16 on load: the stacked parameter takes the dtype asked for
    s16 = nnx.eval_shape(lambda: LLM(LLM_CFG, rngs=nnx.Rngs(1), scan=True))
    load_state_dict(s16, sd, km, dtype=jnp.bfloat16)
    assert s16.layers.mlp.down_proj.kernel[...].dtype == jnp.bfloat16


def test_scanned_siglip_equals_unrolled():
    cfg = TINY.siglip
    a = SiglipVisionTower(cfg, rngs=nnx.Rngs(0), remat="full")
    s = SiglipVisionTower(cfg, rngs=nnx.Rngs(5), remat="full", scan=True)
    km = siglip_key_map(cfg)
    load_state_dict(s, export_state_dict(a, km), km)
    x = jax.random.normal(jax.random.key(2), (2, cfg.image_size, cfg.image_size, 3))

    def run(m):
        return m(x), nnx.grad(lambda m: jnp.sum(m(x) ** 2))(m)

    ya, ga = nnx.jit(run)(a)
    ys, gs = nnx.jit(run)(s)
    _close(ya, ys)
    _close(export_state_dict(ga, km), export_state_dict(gs, km), tol=1e-4)


def test_scanned_janusflow_hf_export_loads_unrolled(tmp_path):
    cfg = dataclasses.replace(TINY, scan_layers=True)
    model = JanusFlow(cfg, rngs=nnx.Rngs(0))
    hf.export_janusflow_hf(model, cfg, str(tmp_path / "hf"))
    unrolled, ucfg = hf.load_janusflow_hf(str(tmp_path / "hf"),
                                          base=dataclasses.replace(TINY, scan_layers=False))
    assert not ucfg.scan_layers and isinstance(unrolled.language_model.layers, nnx.List)
    again, acfg = hf.load_janusflow_hf(str(tmp_path / "hf"), base=cfg)
    assert acfg.scan_layers
    n = cfg.num_gen_tokens
    z = jax.random.normal(jax.random.key(1), (2, cfg.latent_size, cfg.latent_size, cfg.vae.channels))
    t = jnp.array([0.2, 0.7])
    prompt = jax.random.normal(jax.random.key(2), (2, 5, cfg.llm.hidden_size))
    outs = [m.generate_velocity(prompt, None, z, t, with_repa=True) for m in (model, unrolled, again)]
    for o in outs[1:]:
        _close(outs[0].velocity, o.velocity, tol=1e-4)
    # the REPA projector is not in the official layout (both loads initialise it alike), so
    # this compares REPA's read of block repa_layer between the unrolled and scanned LLM
    _close(outs[1].repa_pred, outs[2].repa_pred, tol=1e-4)
    assert outs[0].repa_pred.shape[1] == n


def test_native_checkpoint_loads_in_either_layer_layout(tmp_path):
    """load_model(scan_layers=...) re-lays a saved model out (a scanned 1.3B fine-tunes with
    LoRA unrolled): every weight lands on its layer, and the velocity is the saved model's."""
    from janusflow.checkpoint.model_io import load_model, save_model
    cfg = dataclasses.replace(TINY, scan_layers=True)
    model = JanusFlow(cfg, rngs=nnx.Rngs(0))
    save_model(str(tmp_path / "m"), model, cfg)
    unrolled, ucfg = load_model(str(tmp_path / "m"), scan_layers=False)
    assert ucfg == dataclasses.replace(cfg, scan_layers=False) and isinstance(unrolled.language_model.layers, nnx.List)
    same, scfg = load_model(str(tmp_path / "m"))
    assert scfg.scan_layers
    want = {k: np.asarray(v.get_value()) for k, v in flat_params(model).items()}   # by unrolled path
    got = flat_params(unrolled)
    assert set(got) == set(want) and any(isinstance(k[-1], str) and "layers" in k for k in got)
    for k, v in got.items():
        np.testing.assert_array_equal(np.asarray(v.get_value()), want[k], err_msg=str(k))
    z = jax.random.normal(jax.random.key(1), (2, cfg.latent_size, cfg.latent_size, cfg.vae.channels))
    t = jnp.array([0.2, 0.7])
    prompt = jax.random.normal(jax.random.key(2), (2, 5, cfg.llm.hidden_size))
    outs = [m.generate_velocity(prompt, None, z, t, with_repa=True) for m in (model, unrolled)]
    _close(outs[0].velocity, outs[1].velocity, tol=1e-5)
    _close(outs[0].repa_pred, outs[1].repa_pred, tol=1e-5)
    # and back: the unrolled model saved, loaded scanned
    save_model(str(tmp_path / "u"), unrolled, ucfg)
    again, acfg = load_model(str(tmp_path / "u"), scan_layers=True)
    assert acfg.scan_layers
    for k, v in flat_params(again).items():
        np.testing.assert_array_equal(np.asarray(v.get_value()), want[k], err_msg=str(k))


def _saved_residuals(f, *args) -> list[str]:
    """One line per value the backward pass keeps (jax's print_saved_residuals)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        jax.ad_checkpoint.print_saved_residuals(f, *args)
    return out.getvalue().splitlines()


def test_remat_policies_save_what_their_names_say():
    x = _embeds(1, 5)
    saved = {}
    for name in ("full", "save_qkv_proj", "save_dot_except_mlp", "save_dot_except_mlp_down"):
        m = LLM(dataclasses.replace(LLM_CFG, num_layers=1), rngs=nnx.Rngs(0), remat=name)
        graphdef, state = nnx.split(m)
        f = lambda st, x: jnp.sum(nnx.merge(graphdef, st)(x).hidden)      # noqa: E731
        saved[name] = " ".join(_saved_residuals(f, state, x))
    assert "query_proj" not in saved["full"] and "out_proj" not in saved["full"]
    assert all(n in saved["save_qkv_proj"] for n in ("query_proj", "key_proj", "value_proj"))
    assert "out_proj" not in saved["save_qkv_proj"]
    assert "out_proj" in saved["save_dot_except_mlp"] and "mlp_hidden" not in saved["save_dot_except_mlp"]
    assert "mlp_gate" in saved["save_dot_except_mlp_down"] and "mlp_up" in saved["save_dot_except_mlp_down"]
    assert "mlp_gate" not in saved["save_dot_except_mlp"]


def test_every_remat_policy_gives_the_same_loss_and_grads():
    x = _embeds(1, 6)
    ref = None
    for name in REMAT_POLICIES:
        m = LLM(dataclasses.replace(LLM_CFG, num_layers=2), rngs=nnx.Rngs(0), remat=name, scan=True)
        loss, g = nnx.jit(nnx.value_and_grad(lambda m: jnp.sum(m(x).hidden ** 2)))(m)
        if ref is None:
            ref = (loss, g)
        else:
            _close(ref, (loss, g), tol=1e-4)


def test_unknown_remat_name_is_refused_clearly():
    with pytest.raises(ConfigError, match="save_qkv_proj"):
        dataclasses.replace(TINY, remat="qkv")
    with pytest.raises(ValueError, match="remat policy 'qkv'"):
        LLM(LLM_CFG, rngs=nnx.Rngs(0), remat="qkv")
    with pytest.raises(ConfigError, match="scan_layers"):
        dataclasses.replace(TINY, scan_layers="false")
    assert remat_lib.policy("block") is None and remat_lib.policy("full") is None


def test_gen_codec_remat_same_output_and_grads_fewer_residuals():
    g = TINY.gen_codec
    z = jax.random.normal(jax.random.key(0), (2, 8, 8, TINY.vae.channels))
    t = jnp.array([100.0, 900.0])
    names = {}
    out = {}
    for remat in ("none", "full"):
        enc = GenEncoder(g, latent_channels=TINY.vae.channels, hidden_size=64, rngs=nnx.Rngs(0),
                         remat=remat)
        graphdef, state = nnx.split(enc)
        f = lambda st: jnp.sum(nnx.merge(graphdef, st)(z, t)[0] ** 2)      # noqa: E731
        out[remat] = jax.value_and_grad(f)(state)
        names[remat] = len(_saved_residuals(f, state))
    _close(out["none"], out["full"], tol=1e-4)
    assert names["full"] < names["none"]
