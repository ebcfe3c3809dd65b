"""The longer CPU recipe meant to learn shapes: the default run's tiny JanusFlow (LLM + gen
encoder/decoder + REPA, decoupled SigLIP) with a curriculum: 48 minutes on this machine's 2
idle cores, measured (experiments/shapes_small.md).

`janusflow train --config experiments/shapes_small.py --workdir runs/shapes_small` runs
train/recipe.py as the default run does (SigLIP pre-training, LLM pre-training, paper stages
1-3, evaluation of the final and the untrained model), with, between stage 1 and stage 2, a
generation phase on one-object scenes only (``janusflow_shapes/32px_one_object``): the
default run's diagnosis is that shapes come from examples, and on one-object data they come
first (docs/default_run.md). Every ``curve_every`` steps of the generation phases the EMA
model is scored (shapes benchmark and its one-object diagnostic) into ``curve.jsonl`` and
``curve.png``. Arg "quick": a few steps per phase (smoke test).
"""

import dataclasses

from janusflow.configs.data import SHAPES_32, SHAPES_32_ONE_OBJECT, DataConfig, SourceConfig
from janusflow.configs.presets import tiny
from janusflow.configs.schema import (ConfigError, CurriculumPhase, ExperimentConfig, GenCodecConfig, LossConfig,
                                      MeshConfig, OptimConfig, RecipeConfig, TrainConfig)


def get_config(arg=None):
    gen = SourceConfig(name=SHAPES_32, caption="caption|description")
    # one-object scenes first ("a photo of a red circle" / "One object: a red circle."),
    # generation only: on them the tiny model's shape right went 0.23 -> 0.42 from 80k to 160k
    # examples, where on the mixed scenes 156k examples left it at chance (docs/default_run.md)
    one_object = CurriculumPhase(name="one_object", steps=9000, lr=2e-3, ratios=(0, 1, 0),
                                 gen=dataclasses.replace(gen, name=SHAPES_32_ONE_OBJECT))
    # Sized for 60 minutes on 2 idle cores; measured alone: 48.2 min (beside other jobs: 99).
    # The constant learning rate after warm-up makes a shorter phase a prefix of a longer one.
    # batch 32 (the default run: 16): fewer dispatches of a step whose matrices are tiny.
    # CFG 4 (default 2): on one-object data it drew exactly one object in 0.97 of images
    # (CFG 2: 0.90) with shape right 0.24 (0.21) (docs/default_run.md).
    recipe = RecipeConfig(enabled=True, batch=32, siglip_steps=400, siglip_batch=32, siglip_lr=2e-3,
                          text_steps=200, stage_steps=(150, 6000, 500), stage_lrs=(1e-3, 2e-3, 3e-4),
                          curriculum=(one_object,), curve_every=1000, curve_prompts_per_tag=12,
                          eval_prompts_per_tag=32, cfg_weight=4.0)
    if arg == "quick":
        recipe = dataclasses.replace(recipe, siglip_steps=5, text_steps=5, stage_steps=(5, 5, 5),
                                     curriculum=(dataclasses.replace(one_object, steps=6),), curve_every=3,
                                     curve_prompts_per_tag=1, eval_prompts_per_tag=2, eval_images=1,
                                     eval_questions=12, sample_steps=4)
    elif arg not in (None, ""):
        raise ConfigError(f"experiments/shapes_small.py: unknown arg {arg!r} (expected '' or 'quick')")
    train = TrainConfig(stage=2, steps=1, log_every=100, ckpt_every=1000, mesh=MeshConfig(data=1),
                        optim=OptimConfig(lr=1e-3, warmup_steps=100, ema_decay=0.99),
                        loss=LossConfig(t_mean=-0.5))   # as the default run (experiments/shapes_tiny.py)
    # gen codec 32 channels (the default run: 64): the step is 1.4-2x faster and shape right
    # after 80k one-object examples was the same, 0.23 (docs/default_run.md)
    model = tiny(gen_codec=GenCodecConfig(channels=32, kernel_size=4, stride=4, num_blocks=2, decoder_patch=2,
                                          decoder_upsamples=2))
    return ExperimentConfig(name="shapes_small", model=model, seq_len=256, train=train,
                            data=DataConfig(gen=gen, prompt_len=32, und_text_len=24, text_len=64,
                                            max_turns=1, system_prompt=""),
                            recipe=recipe)
