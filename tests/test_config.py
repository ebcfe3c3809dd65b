"""Config loading, overrides and validation: every error names the offending field."""

import pytest

from janusflow.cli import main as cli
from janusflow.configs.schema import ConfigError, LLMConfig
from janusflow.configs.loader import apply_overrides, load_config


def test_experiment_files_load():
    cfg = load_config("experiments/janusflow_1_3b.py")
    assert cfg.model.llm.num_layers == 24 and cfg.model.num_gen_tokens == 576
    assert load_config("experiments/shapes_tiny.py").model.image_size == 32


def test_overrides_are_typed_and_revalidated():
    cfg = load_config("tiny")
    new = apply_overrides(cfg, ["model.llm.num_layers=2", "model.repa=false", "model.siglip.pixel_mean=0.1,0.2,0.3"])
    assert new.model.llm.num_layers == 2 and new.model.repa is False
    assert new.model.siglip.pixel_mean == (0.1, 0.2, 0.3)
    assert cfg.model.llm.num_layers == 4  # the original is untouched (frozen dataclasses)
    with pytest.raises(ConfigError, match="unknown key 'num_layer' in LLMConfig"):
        apply_overrides(cfg, ["model.llm.num_layer=2"])
    with pytest.raises(ConfigError, match="model.llm.num_layers=two: expected an int"):
        apply_overrides(cfg, ["model.llm.num_layers=two"])
    with pytest.raises(ConfigError, match="repa_layer"):
        apply_overrides(cfg, ["model.repa_layer=9"])
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides(cfg, ["model.repa"])


def test_field_validation_names_field():
    with pytest.raises(ConfigError, match="LLMConfig.num_kv_heads"):
        LLMConfig(num_heads=16, num_kv_heads=3)
    with pytest.raises(ConfigError, match="LLMConfig.hidden_size"):
        LLMConfig(hidden_size=0)
    with pytest.raises(ConfigError, match="'tiny_huge': expected experiments/<file>.py"):
        load_config("tiny_huge")
    with pytest.raises(ConfigError, match="no such file"):
        load_config("experiments/nope.py")


@pytest.mark.parametrize("override, field", [
    ("train.optim.lr=inf", "OptimConfig.lr: must be a finite number, got inf"),
    ("train.optim.lr=nan", "OptimConfig.lr: must be a finite number, got nan"),
    ("train.loss.t_mean=-inf", "LossConfig.t_mean: must be a finite number"),
    ("model.llm.rope_theta=inf", "LLMConfig.rope_theta: must be a finite number"),
    ("model.vae.scaling_factor=0", "VAEConfig.scaling_factor: must be > 0"),
    ("train.optim.min_lr_ratio=2", "OptimConfig.min_lr_ratio: must be in"),
    ("train.optim.eps=0", "OptimConfig.eps: must be > 0"),
    ("recipe.cfg_weight=-1", "RecipeConfig.cfg_weight: must be >= 0"),
])
def test_numeric_fields_must_be_finite_and_in_range(override, field):
    with pytest.raises(ConfigError, match=field.replace("[", r"\[")):
        apply_overrides(load_config("tiny"), [override])


def test_cli_train_refuses_an_infinite_lr_before_any_work(tmp_path, capsys):
    work = tmp_path / "w"
    assert cli.main(["train", "--config", "tiny", "--workdir", str(work), "--set", "train.optim.lr=inf"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "OptimConfig.lr: must be a finite number, got inf" in err
    assert not work.exists()


def test_cli_info_tiny(capsys):
    assert cli.main(["info", "--config", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "language_model" in out and "checkpoint total" in out and "FLOPs" in out


def test_cli_reports_bad_override(capsys):
    assert cli.main(["info", "--config", "tiny", "--set", "model.llm.bogus=1"]) == 2
    assert "unknown key 'bogus'" in capsys.readouterr().err


def test_1_3b_stage_variants_follow_paper_table_1():
    s1, s2, s3 = (load_config(f"experiments/janusflow_1_3b.py:stage={s}") for s in (1, 2, 3))
    assert (s1.train.stage, s1.train.steps, s1.train.optim.lr) == (1, 10_000, 1e-4)
    assert (s2.train.steps, s2.train.optim.warmup_steps) == (390_000, 2000)
    assert (s3.train.steps, s3.train.optim.lr, s3.train.optim.warmup_steps) == (26_000, 2e-5, 1000)
    # rows whose padded tokens match the paper's 512 (stage 3: 256) sequences of 4096
    from janusflow.data.step_budget import paper_rows
    assert s1.train.und_batch + s1.train.gen_batch + s1.train.text_batch == paper_rows(s1, (50, 50, 0), 512)
    assert s3.train.und_batch + s3.train.gen_batch + s3.train.text_batch == paper_rows(s3, (21, 70, 9), 256)
    assert s1.train.text_batch == 0 and s2.train.gen_batch > s2.train.und_batch > s2.train.text_batch
    assert s1.train.optim.ema_decay == 0.99 and s1.train.optim.b2 == 0.95
    with pytest.raises(ConfigError, match="stage must be 1, 2 or 3"):
        load_config("experiments/janusflow_1_3b.py:stage=4")


@pytest.mark.parametrize("override, field", [
    ("data.prompt_len=0", "DataConfig.prompt_len: must be >= 1"),
    ("data.text_len=-1", "DataConfig.text_len: must be >= 1"),
    ("data.und_vae_images=maybe", "DataConfig.und_vae_images: must be auto|yes|no"),
    ("data.und.latents=true", "DataConfig.und.latents: only the gen stream"),
    ("model.llm.num_layers=0", "LLMConfig.num_layers"),
    ("train.steps=0", "TrainConfig.steps"),
    ("train.mesh.data=0", "MeshConfig.data"),
])
def test_every_config_error_is_one_line_naming_the_field(override, field, capsys):
    # the data pipeline's config too: it raised a bare ValueError, which the CLI did not report
    # as a config error
    assert cli.main(["info", "--config", "tiny", "--set", override]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("janusflow info: config error: "), err
    assert field in err[0], err


def test_data_config_raises_config_error():
    from janusflow.configs.data import DataConfig
    with pytest.raises(ConfigError, match="DataConfig.prompt_len: must be >= 1, got 0"):
        DataConfig(prompt_len=0)
