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

Batch: the paper's 512 (stage 3: 256) packed 4096-token sequences per step become padded rows
of the same tokens per step (``data/step_budget.py``; ``janusflow plan`` prints both), at the
paper's steps, so each stage sees the paper's tokens. Stage 2 runs 30:50:20 for its first 10k
steps and 14:80:6 after, in one run (``train.task_batch_schedule``).

Lengths, within the paper's 4096-token sequences: understanding rows 2 + 576 image slots +
1024 text tokens (system prompt, every turn of the conversation; turns past the limit are
dropped whole), generation prompts of 256 tokens (long re-captions; longer ones are cut at a
word-piece boundary, not dropped), text documents of 2048 (longer ones truncated; 4096 would
leave a fifth of stage 2's first 10k steps to text rows and cost ~15% of the examples per
step). ``janusflow data lengths`` reports what each cut drops on a dataset.
"""

from janusflow.configs.schema import ConfigError, ExperimentConfig, OptimConfig, TrainConfig
from janusflow.data.mixing import with_ratio_schedule, with_task_ratios
from janusflow.configs.data import DataConfig, SourceConfig
from janusflow.data.step_budget import paper_rows
from janusflow.configs.presets import janusflow_1_3b

# stage -> (lr, warm-up, steps, paper batch (4096-token sequences), und:gen:text ratios)  (paper Table 1)
STAGES = {
    1: (1e-4, 2000, 10_000, 512, (50, 50, 0)),
    2: (1e-4, 2000, 390_000, 512, (14, 80, 6)),
    3: (2e-5, 1000, 26_000, 256, (21, 70, 9)),
}
# stage -> ((end step, ratios), ...) run before the stage's ratios (paper Table 1)
EARLY_RATIOS = {2: ((10_000, (30, 50, 20)),)}
# tokens of text per understanding row, generation prompt, text document (module doc)
UND_TEXT_LEN, PROMPT_LEN, TEXT_LEN = 1024, 256, 2048


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
    # the official system prompt and whole conversations are DataConfig's defaults
    # no datasets named: the user names them (module doc); a run without them is refused
    data = DataConfig(und=SourceConfig(), gen=SourceConfig(), text=SourceConfig(),
                      und_text_len=UND_TEXT_LEN, prompt_len=PROMPT_LEN, text_len=TEXT_LEN)
    cfg = ExperimentConfig(name=f"janusflow_1_3b_stage{stage}", model=janusflow_1_3b(), seq_len=4096,
                           train=train, data=data)
    cfg = with_task_ratios(cfg, ratios, paper_rows(cfg, ratios, batch))
    early = tuple((end, r, paper_rows(cfg, r, batch)) for end, r in EARLY_RATIOS.get(stage, ()))
    return with_ratio_schedule(cfg, early)
