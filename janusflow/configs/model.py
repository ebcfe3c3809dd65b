"""The model's config: the LLM, SigLIP, gen codec and VAE sizes and :class:`ModelConfig` (which
variant, dtypes, remat, attention). Every field that the released checkpoint's ``config.json``
settles (FFN size, vocab, rope theta, eps, SigLIP ``select_layer``, gen-codec kernel/stride) is
a field here, so the importer can fill it in. Plain dataclasses; imports nothing heavy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from janusflow.configs.checks import check, finite, positive
from janusflow.configs.errors import ConfigError
from janusflow.configs.variants import (GEN_HEADS, RECTIFIED_FLOW, SIGLIP, UND_ENCODERS, GenHead, UndEncoder,
                                        families, family_head, model_parts)

# Activation checkpointing policies by name (janusflow/models/remat.py says what each keeps).
# "block" is the old name of "full".
REMAT_POLICIES = ("none", "full", "block", "dots", "save_qkv_proj", "save_out_proj",
                  "save_dot_except_mlp", "save_dot_except_mlp_down")


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
        finite(self)
        positive(self, "vocab_size", "hidden_size", "intermediate_size", "num_layers",
                  "num_heads", "num_kv_heads", "max_position_embeddings")
        check(self.num_heads % self.num_kv_heads == 0, "LLMConfig.num_kv_heads",
               f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
        if self.head_dim is None:
            check(self.hidden_size % self.num_heads == 0, "LLMConfig.num_heads",
                   f"hidden_size={self.hidden_size} not divisible by num_heads={self.num_heads}")
        check(self.rms_norm_eps > 0, "LLMConfig.rms_norm_eps", "must be > 0")
        check(self.rope_theta > 0, "LLMConfig.rope_theta", f"must be > 0, got {self.rope_theta}")

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
        finite(self)
        positive(self, "image_size", "patch_size", "width", "num_layers", "num_heads")
        check(self.image_size % self.patch_size == 0, "SiglipConfig.image_size",
               f"{self.image_size} not divisible by patch_size {self.patch_size}")
        check(self.width % self.num_heads == 0, "SiglipConfig.num_heads",
               f"width {self.width} not divisible by {self.num_heads} heads")
        check(1 <= self.depth <= self.num_layers, "SiglipConfig.select_layer",
               f"{self.select_layer} selects no valid layer of {self.num_layers}")
        check(len(self.pixel_mean) == 3 and len(self.pixel_std) == 3, "SiglipConfig.pixel_mean/std",
               "need 3 values each")
        check(all(s > 0 for s in self.pixel_std), "SiglipConfig.pixel_std", f"must be > 0, got {self.pixel_std}")
        check(self.mlp_ratio > 0, "SiglipConfig.mlp_ratio", f"must be > 0, got {self.mlp_ratio}")
        check(self.layer_norm_eps > 0, "SiglipConfig.layer_norm_eps", "must be > 0")

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
        finite(self)
        positive(self, "channels", "kernel_size", "stride", "num_blocks", "res_ffn_factor",
                  "decoder_patch", "decoder_upsamples")
        check(self.norm_eps > 0, "GenCodecConfig.norm_eps", "must be > 0")

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
        finite(self)
        check(self.kind in ("kl", "pixel"), "VAEConfig.kind", f"must be 'kl' or 'pixel', got {self.kind!r}")
        positive(self, "in_channels", "latent_channels", "layers_per_block", "norm_num_groups")
        check(self.scaling_factor > 0, "VAEConfig.scaling_factor", f"must be > 0, got {self.scaling_factor}")
        for c in self.block_out_channels:
            check(c % self.norm_num_groups == 0, "VAEConfig.block_out_channels",
                   f"{c} not divisible by norm_num_groups={self.norm_num_groups}")

    @property
    def downsample(self) -> int:
        return 1 if self.kind == "pixel" else 2 ** (len(self.block_out_channels) - 1)

    @property
    def channels(self) -> int:
        return self.in_channels if self.kind == "pixel" else self.latent_channels


@dataclass(frozen=True)
class VQConfig:
    """Janus-Pro's VQ-16 image tokenizer (official ``vq_model.py``, ``VQ_16``): a conv encoder
    downsampling 2^(len(channel_mult)-1) times, a codebook of ``codebook_size`` l2-normalised
    ``embed_dim``-vectors, a mirrored decoder. GroupNorm(32, eps 1e-6) everywhere."""
    codebook_size: int = 16384
    embed_dim: int = 8
    z_channels: int = 256
    base_channels: int = 128
    channel_mult: tuple = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    norm_groups: int = 32
    l2_norm: bool = True

    def __post_init__(self):
        positive(self, "codebook_size", "embed_dim", "z_channels", "base_channels",
                 "num_res_blocks", "norm_groups")
        for m in self.channel_mult:
            check(isinstance(m, int) and m > 0 and (self.base_channels * m) % self.norm_groups == 0,
                  "VQConfig.channel_mult", f"{m}: base_channels*{m} must be a positive multiple "
                  f"of norm_groups={self.norm_groups}")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


# The model families: "janusflow" (rectified-flow head over VAE latents) or "janus_pro" (VQ image
# tokens predicted autoregressively, models/janus_pro.py): ModelConfig.family, the generation
# head's (``model.gen_head`` is the switch).
FAMILIES = families()
ATTENTION_IMPLS = ("xla", "cudnn", "auto", "splash", "cpu_decode", "cpu_block")
MATMUL_IMPLS = ("xla", "vendor", "gemv")


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
    # The registry (configs/variants.py) says what each one reads and builds.
    und_encoder: str = "siglip"
    gen_enabled: bool = True                # False: understanding only (exp. D)
    gen_head: str = RECTIFIED_FLOW.name     # the generation head (configs/variants.py GEN_HEADS)
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
    # models/attention.py), "cpu_decode" (decoding steps on our AVX-512 kernel, else "xla"),
    # "cpu_block" (as "cpu_decode", and LLM blocks with packed weights run a decoding step as one
    # call, kernels/cpu_decode_block.py; the decoders choose it on CPU)
    attention_impl: str = "xla"
    # The LLM's and SigLIP's dense layers: "xla" (XLA's dot), "vendor" (Intel MKL's GEMM as a
    # CPU custom call, janusflow/kernels/cpu_gemm.py; XLA's dot off CPU or without MKL/g++) or
    # "gemv" (products of <= 8 rows, i.e. decoding steps, on our AVX-512 kernel,
    # janusflow/kernels/cpu_gemv.py, <= 256 on weights packed in 12 bits; all else, and off CPU or
    # without AVX-512/g++, XLA's dot)
    matmul_impl: str = "xla"
    # Training refuses to pass images through a randomly initialised KL VAE (train.vae_from
    # names the pretrained one) unless this says a random VAE is intended (tiny test models).
    vae_random_ok: bool = False
    # the autoregressive head only (Janus-Pro): the VQ tokenizer and the width of gen_head's
    # hidden layer (0: the LLM's)
    vq: VQConfig = field(default_factory=VQConfig)
    gen_head_hidden: int = 0

    def __post_init__(self):
        finite(self)
        check(self.und_encoder in UND_ENCODERS, "ModelConfig.und_encoder",
               f"must be one of {tuple(UND_ENCODERS)}, got {self.und_encoder!r}")
        check(self.gen_head in GEN_HEADS, "ModelConfig.gen_head",
               f"must be one of {tuple(GEN_HEADS)}, got {self.gen_head!r}")
        if not self.head.composable:
            check(self.und is SIGLIP and self.gen_enabled and not self.repa, "ModelConfig.gen_head",
                  f"{self.gen_head!r} ({self.family}) is one fixed model with SigLIP understanding, "
                  f"generation and no REPA: set und_encoder='siglip', gen_enabled=True, repa=False")
        if self.head.needs_vq:
            check(self.image_size % self.vq.downsample == 0, "ModelConfig.image_size",
                  f"{self.image_size} not divisible by the VQ downsampling {self.vq.downsample}")
        check(self.und.understands or self.gen_enabled, "ModelConfig.und_encoder",
               "und_encoder='none' with gen_enabled=False leaves no task")
        check(self.beg_of_und_embed in ("official", "learned"), "ModelConfig.beg_of_und_embed",
               f"must be 'official' or 'learned', got {self.beg_of_und_embed!r}")
        check(self.dtype in ("float32", "bfloat16"), "ModelConfig.dtype", f"got {self.dtype!r}")
        check(self.param_dtype in ("float32", "bfloat16"), "ModelConfig.param_dtype", f"got {self.param_dtype!r}")
        check(self.remat in REMAT_POLICIES, "ModelConfig.remat",
               f"must be one of {', '.join(REMAT_POLICIES)}; got {self.remat!r}")
        check(isinstance(self.scan_layers, bool), "ModelConfig.scan_layers",
               f"must be true or false, got {self.scan_layers!r}")
        check(self.attention_impl in ATTENTION_IMPLS, "ModelConfig.attention_impl",
               f"must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}")
        check(self.matmul_impl in MATMUL_IMPLS, "ModelConfig.matmul_impl",
               f"must be one of {MATMUL_IMPLS}, got {self.matmul_impl!r}")
        check(0 < self.repa_layer <= self.llm.num_layers, "ModelConfig.repa_layer",
               f"must be in 1..{self.llm.num_layers}, got {self.repa_layer}")
        check(self.image_size % self.vae.downsample == 0, "ModelConfig.image_size",
               f"{self.image_size} not divisible by the VAE downsampling {self.vae.downsample}")
        check(self.latent_size % self.gen_codec.stride == 0, "ModelConfig.image_size",
               f"latent size {self.latent_size} not divisible by gen_codec.stride {self.gen_codec.stride}")
        check(self.gen_codec.decoder_patch ** self.gen_codec.decoder_upsamples == self.gen_codec.stride,
               "GenCodecConfig.decoder_patch",
               f"decoder upsampling {self.gen_codec.decoder_patch}^{self.gen_codec.decoder_upsamples} "
               f"must undo the encoder stride {self.gen_codec.stride}")
        if self.repa and self.gen_enabled:
            check(self.siglip.num_patches == self.num_gen_tokens, "SiglipConfig.patch_size",
                   f"REPA aligns patch by patch: SigLIP has {self.siglip.num_patches} patches but "
                   f"generation has {self.num_gen_tokens} tokens")

    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae.downsample

    @property
    def gen_grid(self) -> int:
        """Side of the generation token grid (24 for 384 px)."""
        if self.head.needs_vq:
            return self.image_size // self.vq.downsample
        return self.latent_size // self.gen_codec.stride

    @property
    def generates_image_tokens(self) -> bool:
        """Images are generated as discrete VQ tokens by next-token prediction (Janus-Pro), not
        by a velocity field (JanusFlow): the one question training and data ask of the family."""
        return self.head.autoregressive

    @property
    def num_gen_tokens(self) -> int:
        return self.gen_grid ** 2

    @property
    def und(self) -> UndEncoder:
        """The understanding encoder's registry record."""
        return UND_ENCODERS[self.und_encoder]

    @property
    def head(self) -> GenHead:
        """The generation head's registry record."""
        return GEN_HEADS[self.gen_head]

    @property
    def family(self) -> str:
        """The model family ("janusflow" | "janus_pro"): the generation head's."""
        return self.head.family

    @staticmethod
    def upgrade_dict(d: dict, path: str) -> dict:
        """A config dict from before the generation head decided the family: its ``family``
        key (written by every checkpoint until then) names the head. Janus-Pro's were written
        with the head at its default (the flow head's name), as the AR head was not registered."""
        if "family" not in d:
            return d
        d = dict(d)
        family = d.pop("family")
        head = family_head(family) if isinstance(family, str) else None
        where = f"{path}.family" if path else "ModelConfig.family"
        if head is None:
            raise ConfigError(f"{where}: must be one of {FAMILIES}, got {family!r}")
        gen_head = d.get("gen_head", RECTIFIED_FLOW.name)
        if gen_head == RECTIFIED_FLOW.name:
            d["gen_head"] = head.name
        elif isinstance(gen_head, str) and gen_head in GEN_HEADS and GEN_HEADS[gen_head] is not head:
            raise ConfigError(f"{where}: {family!r} but gen_head {gen_head!r} is of family "
                              f"{GEN_HEADS[gen_head].family!r}")
        return d

    @property
    def parts(self) -> frozenset:
        """The model parts (JanusFlow attributes) this configuration builds."""
        return model_parts(self.und, self.head, gen_enabled=self.gen_enabled, repa=self.repa)

    @property
    def num_und_tokens(self) -> int:
        return self.siglip.num_patches if self.und.grid == "siglip" else self.num_gen_tokens

    @property
    def und_begin_slot(self) -> bool:
        """The model fills the <begin_of_image> slot before the understanding image with its own
        vector (JanusFlow's beg_of_und_embed); otherwise (Janus-Pro) that token stays text."""
        return "beg_of_und_embed" in self.parts

    @property
    def uses_siglip(self) -> bool:
        """The SigLIP tower is built: it encodes images for understanding or is REPA's target."""
        return "und_encoder" in self.parts
