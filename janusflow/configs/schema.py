"""The experiment's config, whole: every config dataclass, validated at construction (each bad
field is one :class:`ConfigError` naming it). Imports nothing heavy.

Experiment files (``experiments/*.py``) build an :class:`ExperimentConfig` through
``get_config(arg)``; the named model presets (``tiny``, ``janusflow_1_3b``) live in
:mod:`janusflow.configs.presets`. The dataclasses live by concern and are all importable from
here: the model's in ``configs/model.py`` (variants: ``configs/variants.py``), the training
run's in ``configs/training.py``, the data pipeline's in ``configs/data.py``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from janusflow.configs.checks import check, finite, positive
from janusflow.configs.data import DataConfig
from janusflow.configs.errors import ConfigError
from janusflow.configs.model import (ATTENTION_IMPLS, FAMILIES, REMAT_POLICIES, GenCodecConfig, LLMConfig,
                                     ModelConfig, SiglipConfig, VAEConfig, VQConfig)
from janusflow.configs.training import (OPTIMIZERS, RECIPE_PHASES, SIGLIP_PRETRAIN_FILE, VQ_PRETRAIN_FILE,
                                        CurriculumPhase, LoraConfig, LossConfig,
                                        MeshConfig, OptimConfig, RecipeConfig, TrainConfig)

__all__ = ["ConfigError", "DataConfig", "ATTENTION_IMPLS", "FAMILIES", "VQConfig", "OPTIMIZERS", "REMAT_POLICIES",
           "GenCodecConfig", "LLMConfig",
           "ModelConfig", "SiglipConfig", "VAEConfig", "RECIPE_PHASES", "SIGLIP_PRETRAIN_FILE",
           "VQ_PRETRAIN_FILE", "CurriculumPhase", "LoraConfig", "LossConfig",
           "MeshConfig", "OptimConfig", "RecipeConfig", "TrainConfig", "ExperimentConfig", "replace"]


def replace(cfg, **kw):
    return dataclasses.replace(cfg, **kw)


@dataclass(frozen=True)
class ExperimentConfig:
    """Top of an experiment: ``experiments/<name>.py:get_config(arg)`` returns one of these."""
    name: str = "experiment"
    model: ModelConfig = field(default_factory=ModelConfig)
    seq_len: int = 4096                     # packed training sequence length (paper: 4096)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    synthetic_data: bool = False            # random batches instead of cfg.data (benchmarks, tests)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)

    def __post_init__(self):
        finite(self)
        positive(self, "seq_len")
        check(self.seq_len <= self.model.llm.max_position_embeddings, "ExperimentConfig.seq_len",
               f"{self.seq_len} exceeds the model context {self.model.llm.max_position_embeddings}")
        check(not (self.recipe.enabled and self.model.generates_image_tokens and self.recipe.vq_steps == 0),
              "RecipeConfig.vq_steps", "a recipe run of a model that generates VQ image tokens trains its "
              "tokenizer first: set vq_steps > 0")
        if self.model.attention_impl == "splash":
            # splash runs per shard on whole rows (models/attention.py): a sequence split would
            # need the keys of the other shards, which the kernel does not gather
            for name, target in self.train.activation_rules:
                check(name not in ("length", "vit_length") or target is None,
                       "TrainConfig.activation_rules",
                       f"{name!r} -> {target!r} shards the sequence, which "
                       "ModelConfig.attention_impl='splash' does not support (whole rows per shard)")
