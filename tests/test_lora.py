"""LoRA on the LLM (train.lora.rank): factors are the only LLM parameters trained, merging is
W + alpha/rank * A @ B, and the merged export (`janusflow convert --to-hf`) computes what the
LoRA model computes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from janusflow.configs.presets import tiny
from janusflow.configs.schema import ExperimentConfig, LoraConfig, TrainConfig
from janusflow.parallel.mesh import make_mesh
from janusflow.train.lora import LORA_KEY
from janusflow.train.state import init_state, merge_model


def _lora_state(rank=4):
    cfg = ExperimentConfig(model=tiny(), seq_len=256, synthetic_data=True,
                           train=TrainConfig(stage=3, lora=LoraConfig(rank=rank, alpha=8.0)))
    parts, state, _ = init_state(cfg, make_mesh(cfg.train.mesh, devices=jax.devices()[:1]))
    # as after training: non-zero B (init is zero, which would make every check trivial)
    keys = iter(jax.random.split(jax.random.key(1), 1000))
    lora = jax.tree.map(lambda x: 0.05 * jax.random.normal(next(keys), x.shape, x.dtype), state.params[LORA_KEY])
    return cfg, parts, state._replace(params={**state.params, LORA_KEY: lora})


def test_lora_freezes_the_llm_and_trains_only_factors():
    cfg, parts, state = _lora_state()
    assert "language_model" not in state.params and "und_encoder" not in state.params
    assert "language_model" in state.frozen
    names = sorted(state.params[LORA_KEY])
    assert "language_model.layers.0.self_attn.q_proj.kernel" in names
    assert "language_model.layers.0.mlp.down_proj.kernel" in names
    assert len(names) == 7 * cfg.model.llm.num_layers
    size = lambda t: sum(x.size for x in jax.tree.leaves(t))  # noqa: E731
    # AdamW keeps two moments of the trainable params only: no state for the frozen LLM
    assert size(state.opt_state) <= 2 * size(state.params) + 8


def test_merged_kernel_is_the_lora_layer():
    """x @ (W + s A B) == x @ W + s (x @ A) @ B: the merged model is the LoRA model, layer by layer."""
    cfg, parts, state = _lora_state()
    model = merge_model(parts, state.params, state.frozen)
    f = state.params[LORA_KEY]["language_model.layers.1.self_attn.v_proj.kernel"]
    w = state.frozen["language_model"]["layers"][1]["self_attn"]["v_proj"]["kernel"]
    x = jax.random.normal(jax.random.key(2), (3, w.shape[0]))
    lora_out = x @ w + cfg.train.lora.scale * ((x @ f["a"]) @ f["b"])
    merged_out = model.language_model.layers[1].self_attn.v_proj(x)
    np.testing.assert_allclose(np.asarray(merged_out), np.asarray(lora_out), atol=1e-5)
    assert float(jnp.abs(lora_out - x @ w).max()) > 1e-3        # the factors do change the layer


def test_merged_export_forward_equals_lora_model(tmp_path):
    from janusflow.checkpoint.model_io import load_model, save_model
    from janusflow.cli.main import main
    from janusflow.data.pipeline import shapes_tokenizer
    cfg, parts, state = _lora_state()
    lora_model = merge_model(parts, state.params, state.frozen)      # what the train step runs
    save_model(str(tmp_path / "model"), lora_model, cfg.model, shapes_tokenizer(cfg.model.llm.vocab_size))
    assert main(["convert", "--to-hf", str(tmp_path / "model"), "--out", str(tmp_path / "hf")]) == 0
    exported, _ = load_model(str(tmp_path / "hf"))
    ids = jnp.asarray(np.random.default_rng(0).integers(1, 400, (2, 12)), jnp.int32)

    def logits(m):
        out = m.language_model(m.language_model.embed(ids))
        return np.asarray(m.language_model.logits(out.hidden))
    np.testing.assert_allclose(logits(exported), logits(lora_model), atol=1e-5)


@pytest.mark.slow
def test_lora_finetune_runs_and_saves_merged(tmp_path):
    """The one-command fine-tune with lora=4 from a checkpoint saved with scanned layers (LoRA
    runs unrolled: the warm start re-lays the stacks out per layer): checkpoints (factors
    included) and a final model whose LLM differs from the base only by the merged factors."""
    from test_finetune import _base_checkpoint, _build
    from janusflow.checkpoint.model_io import load_model
    from janusflow.cli.main import main
    data, ckpt = _build(tmp_path), _base_checkpoint(tmp_path, scan_layers=True)
    wd = tmp_path / "wd"
    assert main(["train", "--config", f"janusflow:finetune:data={data},name=colors,init={ckpt},steps=6,lr=1e-2,"
                 "sample_every=0,lora=4", "--workdir", str(wd), "--set", "train.ckpt_every=3"]) == 0
    base, base_cfg = load_model(str(ckpt), scan_layers=False)
    tuned, tuned_cfg = load_model(str(wd / "model"))
    assert base_cfg.scan_layers is False and tuned_cfg.scan_layers is False
    b = base.language_model.layers[0].self_attn.q_proj.kernel.get_value()
    t = tuned.language_model.layers[0].self_attn.q_proj.kernel.get_value()
    assert float(jnp.abs(t - b).max()) > 0
    rank = np.linalg.matrix_rank(np.asarray(t - b, np.float64), tol=1e-6)
    assert 1 <= rank <= 4       # a rank-4 update, as LoRA's
    # the norms were frozen (not LoRA targets)
    np.testing.assert_array_equal(np.asarray(base.language_model.layers[0].input_layernorm.scale.get_value()),
                                  np.asarray(tuned.language_model.layers[0].input_layernorm.scale.get_value()))
