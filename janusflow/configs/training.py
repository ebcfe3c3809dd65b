"""The training run's config: mesh, optimizer, losses, LoRA, :class:`TrainConfig` (one stage)
and :class:`RecipeConfig` (the default run's phases). Plain dataclasses; imports nothing heavy
(the sharding-rule overrides load ``parallel/rules`` only when given)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from janusflow.configs.checks import check, finite, positive


@dataclass(frozen=True)
class MeshConfig:
    """Device mesh ('data', 'fsdp', 'tensor'); -1 fills with the remaining devices."""
    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self):
        finite(self)
        sizes = (self.data, self.fsdp, self.tensor)
        for name, s in zip(("data", "fsdp", "tensor"), sizes):
            check(isinstance(s, int) and (s >= 1 or s == -1), f"MeshConfig.{name}",
                   f"must be a positive int or -1, got {s!r}")
        check(sizes.count(-1) <= 1, "MeshConfig", "at most one axis may be -1")


OPTIMIZERS = ("adamw", "adafactor", "adamw8bit")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW + global-norm clipping + warm-up schedule + EMA (paper section 4.1 defaults).

    ``name`` "adafactor": factored second moments (a row and a column vector per matrix, no
    first moment), so the optimizer state of a weight matrix costs ~0 instead of AdamW's two
    full copies: what lets a full fine-tune of the 1.3B fit one 40 GB accelerator
    (``janusflow plan``). ``b1``/``b2`` are then unused. "adamw8bit": AdamW whose two moments
    are stored block-wise quantized to 8 bits (``train/adam8bit.py``), ~4x less state than
    AdamW's fp32 moments, float32 update math."""
    name: str = "adamw"                     # "adamw" (paper) | "adafactor" | "adamw8bit"
    lr: float = 1e-4
    warmup_steps: int = 2000
    schedule: str = "constant"              # "constant" (paper) | "cosine"
    decay_steps: int = 0                    # cosine: steps after warm-up to reach min_lr_ratio*lr
    min_lr_ratio: float = 0.0
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0                  # 0 disables
    ema_decay: float = 0.99                 # 0 disables the EMA copy
    accum_steps: int = 1                    # gradient accumulation micro-batches per step

    def __post_init__(self):
        finite(self)
        check(self.lr > 0, "OptimConfig.lr", f"must be > 0, got {self.lr}")
        check(self.name in OPTIMIZERS, "OptimConfig.name", f"must be one of {OPTIMIZERS}, got {self.name!r}")
        check(isinstance(self.warmup_steps, int) and self.warmup_steps >= 0, "OptimConfig.warmup_steps",
               f"must be an int >= 0, got {self.warmup_steps!r}")
        check(isinstance(self.decay_steps, int) and self.decay_steps >= 0, "OptimConfig.decay_steps",
               f"must be an int >= 0, got {self.decay_steps!r}")
        check(0 <= self.min_lr_ratio <= 1, "OptimConfig.min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        check(self.eps > 0, "OptimConfig.eps", f"must be > 0, got {self.eps}")
        check(self.schedule in ("constant", "cosine"), "OptimConfig.schedule", f"got {self.schedule!r}")
        check(self.schedule != "cosine" or self.decay_steps > 0, "OptimConfig.decay_steps",
               "cosine needs decay_steps > 0")
        check(0 <= self.b1 < 1 and 0 <= self.b2 < 1, "OptimConfig.b1/b2", "must be in [0, 1)")
        check(0 <= self.ema_decay < 1, "OptimConfig.ema_decay", "must be in [0, 1)")
        check(self.grad_clip >= 0 and self.weight_decay >= 0, "OptimConfig.grad_clip/weight_decay", "must be >= 0")
        positive(self, "accum_steps")


@dataclass(frozen=True)
class LossConfig:
    ar_weight: float = 1.0
    rf_weight: float = 1.0
    repa_weight: float = 1.0                # JanusFlow: 1 (REPA paper: 0.5)
    img_weight: float = 1.0                 # Janus-Pro's image-token cross entropy
    t_sampling: str = "logit_normal"        # "logit_normal" | "uniform"
    t_mean: float = 0.0
    t_std: float = 1.0
    cfg_drop_prob: float = 0.1
    # How the three task means add up (the paper does not say): "task" = mean AR + mean RF +
    # mean REPA, each counted once whatever its rows; "example" = each mean weighted by its
    # task's share of the batch's examples, so every example weighs the same (train/step.py).
    task_weighting: str = "task"

    def __post_init__(self):
        finite(self)
        check(self.t_sampling in ("logit_normal", "uniform"), "LossConfig.t_sampling", f"got {self.t_sampling!r}")
        check(self.t_std > 0, "LossConfig.t_std", "must be > 0")
        check(0 <= self.cfg_drop_prob <= 1, "LossConfig.cfg_drop_prob", "must be in [0, 1]")
        check(self.task_weighting in ("task", "example"), "LossConfig.task_weighting",
               f"must be 'task' or 'example', got {self.task_weighting!r}")
        for n in ("ar_weight", "rf_weight", "repa_weight", "img_weight"):
            check(getattr(self, n) >= 0, f"LossConfig.{n}", "must be >= 0")


@dataclass(frozen=True)
class LoraConfig:
    """LoRA on the LLM's attention and MLP projections (``train/lora.py``); rank 0 = off. On,
    the whole LLM is frozen except the factors, and so is SigLIP; the aligners, the generation
    encoder/decoder and the other small parts train as the stage says. The final model is
    saved merged (W + alpha/rank * A @ B)."""
    rank: int = 0
    alpha: float = 16.0

    def __post_init__(self):
        finite(self)
        check(isinstance(self.rank, int) and not isinstance(self.rank, bool) and self.rank >= 0,
               "LoraConfig.rank", f"must be an int >= 0, got {self.rank!r}")
        check(self.alpha > 0, "LoraConfig.alpha", f"must be > 0, got {self.alpha}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank if self.rank else 0.0


@dataclass(frozen=True)
class TrainConfig:
    stage: int = 2                          # 1: aligners + gen codec; 2: all but SigLIP; 3: all
    steps: int = 1000
    und_batch: int = 8                      # global examples per step, per task
    gen_batch: int = 8
    text_batch: int = 0
    # ((end_step, und, gen, text), ...): steps before end_step use these per-task batches
    # instead (paper stage 2: 30:50:20 for the first 10k steps). One compiled step per
    # distinct size; optimizer, warm-up and EMA continue across (data/mixing.py).
    task_batch_schedule: tuple[tuple[int, int, int, int], ...] = ()
    seed: int = 0
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    log_every: int = 10
    ckpt_every: int = 500
    keep_checkpoints: int = 3
    init_from: str = ""                     # model checkpoint (native or HF dir) or a previous stage's workdir
    vae_from: str = ""                      # diffusers AutoencoderKL dir (the SDXL-VAE) loaded into the state
    vae_dtype: str = "float32"              # compute dtype of the frozen VAE: "float32" | "bfloat16"
    # Overrides of the sharding rules (parallel/rules.py): ((logical axis, mesh axis), ...), the
    # mesh axis a name, a tuple of names or None (replicated); e.g. (("length", "tensor"),).
    param_rules: tuple = ()
    activation_rules: tuple = ()
    # Every sample_every steps (0: never) a grid of sample_prompts (one image each, fixed noise)
    # goes to WORKDIR/samples/step_N.png and TensorBoard, so a fine-tune shows the model
    # moving toward its data (train/samples.py).
    sample_every: int = 0
    sample_prompts: tuple = ()
    sample_steps: int = 20                  # ODE steps per sample
    sample_cfg_weight: float = 2.0

    def __post_init__(self):
        finite(self)
        positive(self, "log_every", "ckpt_every", "keep_checkpoints", "sample_steps")
        check(isinstance(self.sample_every, int) and self.sample_every >= 0, "TrainConfig.sample_every",
               f"must be an int >= 0, got {self.sample_every!r}")
        check(all(isinstance(p, str) and p.strip() for p in self.sample_prompts), "TrainConfig.sample_prompts",
               "must be non-empty strings")
        check(self.sample_every == 0 or self.sample_prompts, "TrainConfig.sample_prompts",
               "sample_every > 0 needs at least one prompt")
        if self.param_rules or self.activation_rules:
            # lazily: the rules module imports jax, which most configs never need to load
            from janusflow.parallel import rules
            rules.check_overrides(self.param_rules, rules.RULES, "TrainConfig.param_rules")
            rules.check_overrides(self.activation_rules, rules.ACTIVATION_RULES, "TrainConfig.activation_rules")
        check(self.stage in (1, 2, 3), "TrainConfig.stage", f"must be 1, 2 or 3, got {self.stage!r}")
        positive(self, "steps")
        for n in ("und_batch", "gen_batch", "text_batch"):
            check(isinstance(getattr(self, n), int) and getattr(self, n) >= 0, f"TrainConfig.{n}", "must be an int >= 0")
        check(self.und_batch + self.gen_batch + self.text_batch > 0, "TrainConfig.*_batch", "all zero")
        last = 0
        for i, e in enumerate(self.task_batch_schedule):
            name = f"TrainConfig.task_batch_schedule[{i}]"
            check(isinstance(e, tuple) and len(e) == 4, name, f"must be (end_step, und, gen, text), got {e!r}")
            check(all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in e), name,
                   f"must hold ints >= 0, got {e!r}")
            check(e[0] > last, name, f"end_step {e[0]} must be > the previous entry's ({last})")
            check(sum(e[1:]) > 0, name, "all task batches zero")
            last = e[0]
        check(self.vae_dtype in ("float32", "bfloat16"), "TrainConfig.vae_dtype", f"got {self.vae_dtype!r}")


# The default recipe's phase directories in WORKDIR, in order (train/recipe.py runs them; sweep
# results and --checkpoint WORKDIR read them).
RECIPE_PHASES = ("llm", "stage1", "stage2", "stage3")
# The pre-training phases' summaries the recipe writes in WORKDIR (a sweep removes them with the run)
SIGLIP_PRETRAIN_FILE, VQ_PRETRAIN_FILE = "siglip_pretrain.json", "vq_pretrain.json"


@dataclass(frozen=True)
class CurriculumPhase:
    """A stage-2 phase of the recipe run before the paper's stage 2 on its own generation data
    (e.g. one-object scenes first, ``experiments/shapes_small.py``), in ``workdir/<name>``."""
    name: str
    steps: int
    lr: float
    ratios: tuple = (0, 1, 0)                # und:gen:text
    gen: Optional[object] = None             # a data.SourceConfig for the gen stream; None: the run's

    def __post_init__(self):
        finite(self)
        check(self.name not in RECIPE_PHASES + ("siglip", "init", "eval_final", "eval_untrained")
              and self.name.replace("_", "").isalnum(), "CurriculumPhase.name",
              f"{self.name!r} must be a new word (letters, digits, _), not a phase of the recipe")
        check(isinstance(self.steps, int) and self.steps > 0, "CurriculumPhase.steps",
              f"must be an int > 0, got {self.steps!r}")
        check(self.lr > 0, "CurriculumPhase.lr", f"must be > 0, got {self.lr}")
        check(len(self.ratios) == 3 and all(x >= 0 for x in self.ratios) and sum(self.ratios) > 0,
              "CurriculumPhase.ratios", f"need 3 values >= 0 (und, gen, text), not all 0, got {self.ratios}")


@dataclass(frozen=True)
class RecipeConfig:
    """The default run's phases (``train/recipe.py``); off for single-stage experiments."""
    enabled: bool = False
    batch: int = 16                         # global examples per step, split by the ratios
    siglip_steps: int = 300
    siglip_lr: float = 1e-3
    siglip_batch: int = 0                   # image-caption pairs per SigLIP step; 0 = ``batch``
    text_steps: int = 300
    text_lr: float = 1e-3
    stage_steps: tuple = (300, 1200, 300)
    stage_lrs: tuple = (1e-3, 1e-3, 3e-4)
    stage_ratios: tuple = (50, 50, 0, 14, 80, 6, 21, 70, 9)   # und:gen:text per stage (paper Table 1)
    # Janus-Pro: the VQ tokenizer trained first (phase vq, train/vq_pretrain.py); 0 steps for JanusFlow
    vq_steps: int = 0
    vq_lr: float = 1e-3
    vq_batch: int = 0                       # images per VQ step; 0 = ``batch``
    eval_prompts_per_tag: int = 8
    eval_images: int = 2
    eval_questions: int = 300
    sample_steps: int = 30
    cfg_weight: float = 2.0
    eval_untrained: bool = True             # also score the untrained model (the "random" baseline)
    # stage-2 phases before the paper's stage 2, each on its own data (CurriculumPhase)
    curriculum: tuple = ()
    # every this many steps of the curriculum, stage 2 and stage 3 (0: never), the EMA model's
    # shapes benchmark on curve_prompts_per_tag x eval_images images -> workdir/curve.jsonl
    curve_every: int = 0
    curve_prompts_per_tag: int = 8

    def __post_init__(self):
        finite(self)
        positive(self, "batch", "siglip_steps", "text_steps", "eval_prompts_per_tag", "eval_images", "sample_steps")
        check(isinstance(self.vq_steps, int) and self.vq_steps >= 0 and self.vq_batch >= 0 and self.vq_lr > 0,
              "RecipeConfig.vq_steps/vq_batch/vq_lr", "steps and batch must be ints >= 0, lr > 0")
        check(self.siglip_batch >= 0, "RecipeConfig.siglip_batch", f"must be >= 0 (0 = batch), got {self.siglip_batch}")
        check(len(self.stage_steps) == 3 and len(self.stage_lrs) == 3, "RecipeConfig.stage_steps/stage_lrs",
               "need 3 values each")
        check(len(self.stage_ratios) == 9, "RecipeConfig.stage_ratios", "need 9 values (und, gen, text per stage)")
        for n, v in (("siglip_lr", self.siglip_lr), ("text_lr", self.text_lr),
                     *((f"stage_lrs[{i}]", x) for i, x in enumerate(self.stage_lrs))):
            check(v > 0, f"RecipeConfig.{n}", f"must be > 0, got {v}")
        check(all(int(x) == x and x >= 0 for x in self.stage_steps), "RecipeConfig.stage_steps",
               f"must be ints >= 0, got {self.stage_steps}")
        check(all(x >= 0 for x in self.stage_ratios), "RecipeConfig.stage_ratios",
               f"must be >= 0, got {self.stage_ratios}")
        check(self.cfg_weight >= 0, "RecipeConfig.cfg_weight", f"must be >= 0, got {self.cfg_weight}")
        check(all(isinstance(p, CurriculumPhase) for p in self.curriculum), "RecipeConfig.curriculum",
              "must be a tuple of CurriculumPhase")
        names = [p.name for p in self.curriculum]
        check(len(set(names)) == len(names), "RecipeConfig.curriculum", f"phase names repeat: {names}")
        check(isinstance(self.curve_every, int) and self.curve_every >= 0, "RecipeConfig.curve_every",
              f"must be an int >= 0, got {self.curve_every!r}")
        positive(self, "curve_prompts_per_tag")
