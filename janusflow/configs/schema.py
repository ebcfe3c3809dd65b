"""Model configuration: frozen dataclasses, validated at construction.

Experiment files (``experiments/*.py``) build these through ``get_config(arg)``; the named
model presets (``tiny``, ``janusflow_1_3b``) live in :mod:`janusflow.configs.presets`. Every field that
the released checkpoint's ``config.json`` settles (FFN size, vocab, rope theta, eps, SigLIP
``select_layer``, gen-codec kernel/stride) is a field here, so the importer can fill it in.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional

from janusflow.configs.data import DataConfig
from janusflow.configs.errors import ConfigError


# Activation checkpointing policies by name (janusflow/models/remat.py says what each keeps).
# "block" is the old name of "full".
REMAT_POLICIES = ("none", "full", "block", "dots", "save_qkv_proj", "save_out_proj",
                  "save_dot_except_mlp", "save_dot_except_mlp_down")


def _check(cond: bool, name: str, msg: str):
    if not cond:
        raise ConfigError(f"{name}: {msg}")


def _finite(obj):
    """Every float field (and float in a tuple field) of ``obj`` is a finite number: ``inf``
    or ``nan`` (``--set train.optim.lr=inf``) passes comparisons like ``lr > 0`` and only
    surfaces later as a non-finite loss."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        for i, x in enumerate(v if isinstance(v, tuple) else (v,)):
            if isinstance(x, float) and not math.isfinite(x):
                where = f"{type(obj).__name__}.{f.name}" + (f"[{i}]" if isinstance(v, tuple) else "")
                raise ConfigError(f"{where}: must be a finite number, got {x!r}")


def _positive(obj, *names):
    for n in names:
        v = getattr(obj, n)
        _check(isinstance(v, int) and not isinstance(v, bool) and v > 0,
               f"{type(obj).__name__}.{n}", f"must be a positive int, got {v!r}")


@dataclass(frozen=True)
class LLMConfig:
    """LLaMA-architecture decoder (HF ``LlamaForCausalLM`` layout)."""
    vocab_size: int = 102400
    hidden_size: int = 2048
    intermediate_size: int = 5632
    num_layers: int = 24
    num_heads: int = 16
    num_kv_heads: int = 16
    head_dim: Optional[int] = None          # None: hidden_size // num_heads
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False

    def __post_init__(self):
        _finite(self)
        _positive(self, "vocab_size", "hidden_size", "intermediate_size", "num_layers",
                  "num_heads", "num_kv_heads", "max_position_embeddings")
        _check(self.num_heads % self.num_kv_heads == 0, "LLMConfig.num_kv_heads",
               f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
        if self.head_dim is None:
            _check(self.hidden_size % self.num_heads == 0, "LLMConfig.num_heads",
                   f"hidden_size={self.hidden_size} not divisible by num_heads={self.num_heads}")
        _check(self.rms_norm_eps > 0, "LLMConfig.rms_norm_eps", "must be > 0")
        _check(self.rope_theta > 0, "LLMConfig.rope_theta", f"must be > 0, got {self.rope_theta}")

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads


@dataclass(frozen=True)
class SiglipConfig:
    """SigLIP ViT (timm ``VisionTransformer`` layout as in JanusFlow's ``siglip_vit.py``).

    ``num_layers`` is the full tower; ``select_layer`` decides how many blocks are built and
    run (official rule: <= 0 counts from the end, -1 = all). The output is the final
    LayerNorm applied to the last built block, as the official tower computes it.
    """
    image_size: int = 384
    patch_size: int = 16
    width: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-6
    select_layer: int = -1
    attn_pool: bool = True                  # unused by JanusFlow, carried for faithful import/export
    pixel_mean: tuple = (0.5, 0.5, 0.5)
    pixel_std: tuple = (0.5, 0.5, 0.5)

    def __post_init__(self):
        _finite(self)
        _positive(self, "image_size", "patch_size", "width", "num_layers", "num_heads")
        _check(self.image_size % self.patch_size == 0, "SiglipConfig.image_size",
               f"{self.image_size} not divisible by patch_size {self.patch_size}")
        _check(self.width % self.num_heads == 0, "SiglipConfig.num_heads",
               f"width {self.width} not divisible by {self.num_heads} heads")
        _check(1 <= self.depth <= self.num_layers, "SiglipConfig.select_layer",
               f"{self.select_layer} selects no valid layer of {self.num_layers}")
        _check(len(self.pixel_mean) == 3 and len(self.pixel_std) == 3, "SiglipConfig.pixel_mean/std",
               "need 3 values each")
        _check(all(s > 0 for s in self.pixel_std), "SiglipConfig.pixel_std", f"must be > 0, got {self.pixel_std}")
        _check(self.mlp_ratio > 0, "SiglipConfig.mlp_ratio", f"must be > 0, got {self.mlp_ratio}")
        _check(self.layer_norm_eps > 0, "SiglipConfig.layer_norm_eps", "must be > 0")

    @property
    def depth(self) -> int:
        """Number of blocks actually built (official ``create_siglip_vit`` rule)."""
        if self.select_layer <= 0:
            return min(self.num_layers, self.num_layers + self.select_layer + 1)
        return min(self.num_layers, self.select_layer)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def mlp_dim(self) -> int:
        return int(self.width * self.mlp_ratio)


@dataclass(frozen=True)
class GenCodecConfig:
    """ShallowUViT generation encoder/decoder (official ``uvit.py``)."""
    channels: int = 768                     # block_out_channels[0]; also the time-proj width
    kernel_size: int = 2                    # in_conv; UNCONFIRMED -> from config.json
    stride: int = 2
    padding: Optional[int] = None           # None: ceil(kernel_size - stride) (official rule)
    num_blocks: int = 2                     # layers_in_middle (encoder and decoder)
    res_ffn_factor: int = 4
    norm_eps: float = 1e-6
    decoder_patch: int = 2                  # Unpatchify pixel-shuffle factor
    decoder_upsamples: int = 1              # number of Unpatchify stages
    use_bias: bool = True

    def __post_init__(self):
        _finite(self)
        _positive(self, "channels", "kernel_size", "stride", "num_blocks", "res_ffn_factor",
                  "decoder_patch", "decoder_upsamples")
        _check(self.norm_eps > 0, "GenCodecConfig.norm_eps", "must be > 0")

    @property
    def in_padding(self) -> int:
        import math
        return self.padding if self.padding is not None else max(0, math.ceil(self.kernel_size - self.stride))


@dataclass(frozen=True)
class VAEConfig:
    """AutoencoderKL (diffusers layout). ``kind='pixel'``: identity latent for tiny configs."""
    kind: str = "kl"                        # "kl" | "pixel"
    in_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    scaling_factor: float = 0.13025         # SDXL-VAE
    shift_factor: float = 0.0
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    def __post_init__(self):
        _finite(self)
        _check(self.kind in ("kl", "pixel"), "VAEConfig.kind", f"must be 'kl' or 'pixel', got {self.kind!r}")
        _positive(self, "in_channels", "latent_channels", "layers_per_block", "norm_num_groups")
        _check(self.scaling_factor > 0, "VAEConfig.scaling_factor", f"must be > 0, got {self.scaling_factor}")
        for c in self.block_out_channels:
            _check(c % self.norm_num_groups == 0, "VAEConfig.block_out_channels",
                   f"{c} not divisible by norm_num_groups={self.norm_num_groups}")

    @property
    def downsample(self) -> int:
        return 1 if self.kind == "pixel" else 2 ** (len(self.block_out_channels) - 1)

    @property
    def channels(self) -> int:
        return self.in_channels if self.kind == "pixel" else self.latent_channels


UND_ENCODERS = ("siglip", "shared_gen", "separate_gen", "none")
ATTENTION_IMPLS = ("xla", "cudnn", "auto", "splash")


@dataclass(frozen=True)
class ModelConfig:
    llm: LLMConfig = field(default_factory=LLMConfig)
    siglip: SiglipConfig = field(default_factory=SiglipConfig)
    gen_codec: GenCodecConfig = field(default_factory=GenCodecConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    image_size: int = 384                   # generation resolution (pixels)
    # Paper Table 6 ablations. und_encoder: "siglip" (JanusFlow), "shared_gen" (understanding
    # reuses the generation encoder and its aligner, exp. B), "separate_gen" (a second copy of
    # the VAE+ConvNeXt encoder for understanding, exp. C), "none" (generation only, exp. E).
    und_encoder: str = "siglip"
    gen_enabled: bool = True                # False: understanding only (exp. D)
    # The vector in the <begin_of_image> slot before the understanding image embeddings.
    # "official": initialised to zeros and given no gradient, as the released module does
    # (nn.Parameter(torch.zeros(1, 2048)), used as beg_of_und_embed[0].detach()), so it keeps
    # the value it starts from: zeros, or an imported checkpoint's. "learned": N(0, 0.02)
    # init and trained from stage 1 on (the tiny runs').
    beg_of_und_embed: str = "official"
    repa: bool = True                       # build the REPA projector (and keep SigLIP as target)
    repa_layer: int = 6                     # LLM hidden states after this many blocks
    repa_hidden: int = 2048
    dtype: str = "float32"                  # compute dtype: "float32" | "bfloat16"
    param_dtype: str = "float32"
    remat: str = "none"                     # activation checkpointing policy: REMAT_POLICIES
    # Stack the LLM's and SigLIP's blocks (a leading "layers" axis on their parameters) and run
    # them with lax.scan: the compiled program holds one block instead of one per layer.
    scan_layers: bool = False
    # "xla" (default; layers.dot_product_attention: fp32 accumulation, the fast bf16 path on CPU),
    # "cudnn" (GPU flash attention), "auto" (jax picks), "splash" (the Pallas kernel on TPU,
    # models/attention.py)
    attention_impl: str = "xla"
    # Training refuses to pass images through a randomly initialised KL VAE (train.vae_from
    # names the pretrained one) unless this says a random VAE is intended (tiny test models).
    vae_random_ok: bool = False

    def __post_init__(self):
        _finite(self)
        _check(self.und_encoder in UND_ENCODERS, "ModelConfig.und_encoder",
               f"must be one of {UND_ENCODERS}, got {self.und_encoder!r}")
        _check(self.und_encoder != "none" or self.gen_enabled, "ModelConfig.und_encoder",
               "und_encoder='none' with gen_enabled=False leaves no task")
        _check(self.beg_of_und_embed in ("official", "learned"), "ModelConfig.beg_of_und_embed",
               f"must be 'official' or 'learned', got {self.beg_of_und_embed!r}")
        _check(self.dtype in ("float32", "bfloat16"), "ModelConfig.dtype", f"got {self.dtype!r}")
        _check(self.param_dtype in ("float32", "bfloat16"), "ModelConfig.param_dtype", f"got {self.param_dtype!r}")
        _check(self.remat in REMAT_POLICIES, "ModelConfig.remat",
               f"must be one of {', '.join(REMAT_POLICIES)}; got {self.remat!r}")
        _check(isinstance(self.scan_layers, bool), "ModelConfig.scan_layers",
               f"must be true or false, got {self.scan_layers!r}")
        _check(self.attention_impl in ATTENTION_IMPLS, "ModelConfig.attention_impl",
               f"must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}")
        _check(0 < self.repa_layer <= self.llm.num_layers, "ModelConfig.repa_layer",
               f"must be in 1..{self.llm.num_layers}, got {self.repa_layer}")
        _check(self.image_size % self.vae.downsample == 0, "ModelConfig.image_size",
               f"{self.image_size} not divisible by the VAE downsampling {self.vae.downsample}")
        _check(self.latent_size % self.gen_codec.stride == 0, "ModelConfig.image_size",
               f"latent size {self.latent_size} not divisible by gen_codec.stride {self.gen_codec.stride}")
        _check(self.gen_codec.decoder_patch ** self.gen_codec.decoder_upsamples == self.gen_codec.stride,
               "GenCodecConfig.decoder_patch",
               f"decoder upsampling {self.gen_codec.decoder_patch}^{self.gen_codec.decoder_upsamples} "
               f"must undo the encoder stride {self.gen_codec.stride}")
        if self.repa and self.gen_enabled:
            _check(self.siglip.num_patches == self.num_gen_tokens, "SiglipConfig.patch_size",
                   f"REPA aligns patch by patch: SigLIP has {self.siglip.num_patches} patches but "
                   f"generation has {self.num_gen_tokens} tokens")

    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae.downsample

    @property
    def gen_grid(self) -> int:
        """Side of the generation token grid (24 for 384 px)."""
        return self.latent_size // self.gen_codec.stride

    @property
    def num_gen_tokens(self) -> int:
        return self.gen_grid ** 2

    @property
    def num_und_tokens(self) -> int:
        return self.siglip.num_patches if self.und_encoder == "siglip" else self.num_gen_tokens

    @property
    def uses_siglip(self) -> bool:
        return self.und_encoder == "siglip" or self.repa


def replace(cfg, **kw):
    return dataclasses.replace(cfg, **kw)


@dataclass(frozen=True)
class MeshConfig:
    """Device mesh ('data', 'fsdp', 'tensor'); -1 fills with the remaining devices."""
    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self):
        _finite(self)
        sizes = (self.data, self.fsdp, self.tensor)
        for name, s in zip(("data", "fsdp", "tensor"), sizes):
            _check(isinstance(s, int) and (s >= 1 or s == -1), f"MeshConfig.{name}",
                   f"must be a positive int or -1, got {s!r}")
        _check(sizes.count(-1) <= 1, "MeshConfig", "at most one axis may be -1")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW + global-norm clipping + warm-up schedule + EMA (paper section 4.1 defaults).

    ``name`` "adafactor": factored second moments (a row and a column vector per matrix, no
    first moment), so the optimizer state of a weight matrix costs ~0 instead of AdamW's two
    full copies: what lets a full fine-tune of the 1.3B fit one 40 GB accelerator
    (``janusflow plan``). ``b1``/``b2`` are then unused."""
    name: str = "adamw"                     # "adamw" (paper) | "adafactor"
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
        _finite(self)
        _check(self.lr > 0, "OptimConfig.lr", f"must be > 0, got {self.lr}")
        _check(self.name in ("adamw", "adafactor"), "OptimConfig.name",
               f"must be 'adamw' or 'adafactor', got {self.name!r}")
        _check(isinstance(self.warmup_steps, int) and self.warmup_steps >= 0, "OptimConfig.warmup_steps",
               f"must be an int >= 0, got {self.warmup_steps!r}")
        _check(isinstance(self.decay_steps, int) and self.decay_steps >= 0, "OptimConfig.decay_steps",
               f"must be an int >= 0, got {self.decay_steps!r}")
        _check(0 <= self.min_lr_ratio <= 1, "OptimConfig.min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        _check(self.eps > 0, "OptimConfig.eps", f"must be > 0, got {self.eps}")
        _check(self.schedule in ("constant", "cosine"), "OptimConfig.schedule", f"got {self.schedule!r}")
        _check(self.schedule != "cosine" or self.decay_steps > 0, "OptimConfig.decay_steps",
               "cosine needs decay_steps > 0")
        _check(0 <= self.b1 < 1 and 0 <= self.b2 < 1, "OptimConfig.b1/b2", "must be in [0, 1)")
        _check(0 <= self.ema_decay < 1, "OptimConfig.ema_decay", "must be in [0, 1)")
        _check(self.grad_clip >= 0 and self.weight_decay >= 0, "OptimConfig.grad_clip/weight_decay", "must be >= 0")
        _positive(self, "accum_steps")


@dataclass(frozen=True)
class LossConfig:
    ar_weight: float = 1.0
    rf_weight: float = 1.0
    repa_weight: float = 1.0                # JanusFlow: 1 (REPA paper: 0.5)
    t_sampling: str = "logit_normal"        # "logit_normal" | "uniform"
    t_mean: float = 0.0
    t_std: float = 1.0
    cfg_drop_prob: float = 0.1
    # How the three task means add up (the paper does not say): "task" = mean AR + mean RF +
    # mean REPA, each counted once whatever its rows; "example" = each mean weighted by its
    # task's share of the batch's examples, so every example weighs the same (train/step.py).
    task_weighting: str = "task"

    def __post_init__(self):
        _finite(self)
        _check(self.t_sampling in ("logit_normal", "uniform"), "LossConfig.t_sampling", f"got {self.t_sampling!r}")
        _check(self.t_std > 0, "LossConfig.t_std", "must be > 0")
        _check(0 <= self.cfg_drop_prob <= 1, "LossConfig.cfg_drop_prob", "must be in [0, 1]")
        _check(self.task_weighting in ("task", "example"), "LossConfig.task_weighting",
               f"must be 'task' or 'example', got {self.task_weighting!r}")
        for n in ("ar_weight", "rf_weight", "repa_weight"):
            _check(getattr(self, n) >= 0, f"LossConfig.{n}", "must be >= 0")


@dataclass(frozen=True)
class LoraConfig:
    """LoRA on the LLM's attention and MLP projections (``train/lora.py``); rank 0 = off. On,
    the whole LLM is frozen except the factors, and so is SigLIP; the aligners, the generation
    encoder/decoder and the other small parts train as the stage says. The final model is
    saved merged (W + alpha/rank * A @ B)."""
    rank: int = 0
    alpha: float = 16.0

    def __post_init__(self):
        _finite(self)
        _check(isinstance(self.rank, int) and not isinstance(self.rank, bool) and self.rank >= 0,
               "LoraConfig.rank", f"must be an int >= 0, got {self.rank!r}")
        _check(self.alpha > 0, "LoraConfig.alpha", f"must be > 0, got {self.alpha}")

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
        _finite(self)
        _positive(self, "log_every", "ckpt_every", "keep_checkpoints", "sample_steps")
        _check(isinstance(self.sample_every, int) and self.sample_every >= 0, "TrainConfig.sample_every",
               f"must be an int >= 0, got {self.sample_every!r}")
        _check(all(isinstance(p, str) and p.strip() for p in self.sample_prompts), "TrainConfig.sample_prompts",
               "must be non-empty strings")
        _check(self.sample_every == 0 or self.sample_prompts, "TrainConfig.sample_prompts",
               "sample_every > 0 needs at least one prompt")
        if self.param_rules or self.activation_rules:
            # lazily: the rules module imports jax, which most configs never need to load
            from janusflow.parallel import rules
            rules.check_overrides(self.param_rules, rules.RULES, "TrainConfig.param_rules")
            rules.check_overrides(self.activation_rules, rules.ACTIVATION_RULES, "TrainConfig.activation_rules")
        _check(self.stage in (1, 2, 3), "TrainConfig.stage", f"must be 1, 2 or 3, got {self.stage!r}")
        _positive(self, "steps")
        for n in ("und_batch", "gen_batch", "text_batch"):
            _check(isinstance(getattr(self, n), int) and getattr(self, n) >= 0, f"TrainConfig.{n}", "must be an int >= 0")
        _check(self.und_batch + self.gen_batch + self.text_batch > 0, "TrainConfig.*_batch", "all zero")
        last = 0
        for i, e in enumerate(self.task_batch_schedule):
            name = f"TrainConfig.task_batch_schedule[{i}]"
            _check(isinstance(e, tuple) and len(e) == 4, name, f"must be (end_step, und, gen, text), got {e!r}")
            _check(all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in e), name,
                   f"must hold ints >= 0, got {e!r}")
            _check(e[0] > last, name, f"end_step {e[0]} must be > the previous entry's ({last})")
            _check(sum(e[1:]) > 0, name, "all task batches zero")
            last = e[0]
        _check(self.vae_dtype in ("float32", "bfloat16"), "TrainConfig.vae_dtype", f"got {self.vae_dtype!r}")


# The default recipe's phase directories in WORKDIR, in order (train/recipe.py runs them; sweep
# results and --checkpoint WORKDIR read them).
RECIPE_PHASES = ("llm", "stage1", "stage2", "stage3")


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
        _finite(self)
        _check(self.name not in RECIPE_PHASES + ("siglip", "init", "eval_final", "eval_untrained")
               and self.name.replace("_", "").isalnum(), "CurriculumPhase.name",
               f"{self.name!r} must be a new word (letters, digits, _), not a phase of the recipe")
        _check(isinstance(self.steps, int) and self.steps > 0, "CurriculumPhase.steps", f"must be an int > 0, got {self.steps!r}")
        _check(self.lr > 0, "CurriculumPhase.lr", f"must be > 0, got {self.lr}")
        _check(len(self.ratios) == 3 and all(x >= 0 for x in self.ratios) and sum(self.ratios) > 0,
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
        _finite(self)
        _positive(self, "batch", "siglip_steps", "text_steps", "eval_prompts_per_tag", "eval_images", "sample_steps")
        _check(self.siglip_batch >= 0, "RecipeConfig.siglip_batch", f"must be >= 0 (0 = batch), got {self.siglip_batch}")
        _check(len(self.stage_steps) == 3 and len(self.stage_lrs) == 3, "RecipeConfig.stage_steps/stage_lrs",
               "need 3 values each")
        _check(len(self.stage_ratios) == 9, "RecipeConfig.stage_ratios", "need 9 values (und, gen, text per stage)")
        for n, v in (("siglip_lr", self.siglip_lr), ("text_lr", self.text_lr),
                     *((f"stage_lrs[{i}]", x) for i, x in enumerate(self.stage_lrs))):
            _check(v > 0, f"RecipeConfig.{n}", f"must be > 0, got {v}")
        _check(all(int(x) == x and x >= 0 for x in self.stage_steps), "RecipeConfig.stage_steps",
               f"must be ints >= 0, got {self.stage_steps}")
        _check(all(x >= 0 for x in self.stage_ratios), "RecipeConfig.stage_ratios",
               f"must be >= 0, got {self.stage_ratios}")
        _check(self.cfg_weight >= 0, "RecipeConfig.cfg_weight", f"must be >= 0, got {self.cfg_weight}")
        _check(all(isinstance(p, CurriculumPhase) for p in self.curriculum), "RecipeConfig.curriculum",
               "must be a tuple of CurriculumPhase")
        names = [p.name for p in self.curriculum]
        _check(len(set(names)) == len(names), "RecipeConfig.curriculum", f"phase names repeat: {names}")
        _check(isinstance(self.curve_every, int) and self.curve_every >= 0, "RecipeConfig.curve_every",
               f"must be an int >= 0, got {self.curve_every!r}")
        _positive(self, "curve_prompts_per_tag")


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
        _finite(self)
        _positive(self, "seq_len")
        _check(self.seq_len <= self.model.llm.max_position_embeddings, "ExperimentConfig.seq_len",
               f"{self.seq_len} exceeds the model context {self.model.llm.max_position_embeddings}")
        if self.model.attention_impl == "splash":
            # splash runs per shard on whole rows (models/attention.py): a sequence split would
            # need the keys of the other shards, which the kernel does not gather
            for name, target in self.train.activation_rules:
                _check(name not in ("length", "vit_length") or target is None,
                       "TrainConfig.activation_rules",
                       f"{name!r} -> {target!r} shards the sequence, which "
                       "ModelConfig.attention_impl='splash' does not support (whole rows per shard)")
