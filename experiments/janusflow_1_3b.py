"""JanusFlow-1.3B at 384 px: the official architecture and the paper's three-stage recipe.

Paper Table 1: stage 1 adapts the new parts (LLM and SigLIP frozen), stage 2 is unified
pre-training (all but SigLIP), stage 3 is SFT (all). AdamW (0.9, 0.95), no weight decay,
clipping 1.0, EMA 0.99, constant lr after warm-up, sequences of 4096.

  janusflow train --config experiments/janusflow_1_3b.py:stage=1 --workdir gs://.../s1 \
      --set train.init_from=/ckpt/init          # DeepSeek-LLM + SigLIP imported (see README)
  janusflow train --config experiments/janusflow_1_3b.py:stage=2 --workdir .../s2 \
      --set train.init_from=.../s1              # a previous stage's workdir (its final model)
  janusflow train --config experiments/janusflow_1_3b.py:stage=3 --workdir .../s3 \
      --set train.init_from=.../s2

Data sources (``data.und/gen/text``) must be named (``--set data.gen.name=...``, the user's
TFDS datasets): they are left empty, so a run that names none stops with an error instead of
training the 1.3B model on the toy shapes. So must the VAE: ``--vae DIR`` (the SDXL-VAE) or
``data.gen.latents=true`` (``janusflow data latents``).
"""

import dataclasses

from janusflow.config import ConfigError, ExperimentConfig, OptimConfig, TrainConfig
from janusflow.data.mixing import with_task_ratios
from janusflow.data.pipeline import DataConfig, SourceConfig
from janusflow.presets import janusflow_1_3b

# stage -> (lr, warm-up, steps, global batch, und:gen:text ratios)  (paper Table 1)
STAGES = {
    1: (1e-4, 2000, 10_000, 512, (50, 50, 0)),
    2: (1e-4, 2000, 390_000, 512, (14, 80, 6)),   # the paper uses 30:50:20 for the first 10k steps
    3: (2e-5, 1000, 26_000, 256, (21, 70, 9)),
}


def get_config(arg=None):
    args = dict(kv.split("=", 1) for kv in (arg or "").split(",") if kv)
    unknown = set(args) - {"stage"}
    if unknown:
        raise ConfigError(f"experiments/janusflow_1_3b.py: unknown arg(s) {sorted(unknown)}; use stage=1|2|3")
    stage = int(args.get("stage", 2))
    if stage not in STAGES:
        raise ConfigError(f"experiments/janusflow_1_3b.py: stage must be 1, 2 or 3, got {stage}")
    lr, warmup, steps, batch, ratios = STAGES[stage]
    train = TrainConfig(stage=stage, steps=steps, log_every=10, ckpt_every=1000, keep_checkpoints=3,
                        optim=OptimConfig(lr=lr, warmup_steps=warmup, b1=0.9, b2=0.95, weight_decay=0.0,
                                          grad_clip=1.0, ema_decay=0.99))
    cfg = ExperimentConfig(name=f"janusflow_1_3b_stage{stage}", model=janusflow_1_3b(), seq_len=4096,
                           train=train, data=DataConfig(und=SourceConfig(), gen=SourceConfig(),
                                                        text=SourceConfig()))   # named by the user
    return with_task_ratios(cfg, ratios, batch)
