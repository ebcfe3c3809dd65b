"""The model variants, chosen in one place: which understanding encoder turns an image into the
LLM's understanding tokens (``model.und_encoder``, the encoders of the paper's Table 6
ablation) and which generation head makes images (``model.gen_head``).

A variant is a record of what the rest of the system needs to know about it: which image input
it reads and which model parts it needs; a generation head also says which model family it
belongs to and so which model class builds it, which official checkpoint layout it loads from,
which image tokenizer it needs (a VAE or a VQ tokenizer), which sampler makes its images and
the official CFG weight. The parts of the composed model are built by name in
``models/parts.py``. The rest of the code asks these records (``cfg.und.reads_latents``,
``cfg.head.needs_vae``, ``cfg.parts``), never the variant's or the family's name.

Adding a variant: one ``register_*`` call here naming its parts, plus the builders of any new
part in ``models/parts.py`` (appended there: the build order fixes every existing variant's
random initialisation). A new generation head also brings its forward and its objective.

Imports nothing heavy: the config schema validates against this registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

IMAGE_INPUTS = ("pixels", "latents")   # SigLIP-normalised images | scaled VAE latents
CODECS = ("vae", "vq")                 # a generation head's image tokenizer: KL/pixel VAE | VQ
SAMPLERS = ("flow", "autoregressive")  # ODE over latents | image tokens one at a time


@dataclass(frozen=True)
class UndEncoder:
    """An understanding encoder: ``encoder`` and ``aligner`` (part names) map the image to the
    LLM width; ``image_input`` is what the encoder reads (None: the model does not understand
    images); ``grid`` is whose patch grid sets the number of understanding tokens."""
    name: str
    image_input: Optional[str]
    encoder: Optional[str]
    aligner: Optional[str]
    grid: Optional[str]            # "siglip" | "gen" | None
    paper: str                     # where the paper uses it

    @property
    def understands(self) -> bool:
        return self.image_input is not None

    @property
    def reads_pixels(self) -> bool:
        return self.image_input == "pixels"

    @property
    def reads_latents(self) -> bool:
        """Understanding images pass through the VAE first (the VAE is needed to answer)."""
        return self.image_input == "latents"

    @property
    def parts(self) -> tuple:
        if not self.understands:
            return ()
        return (self.encoder, self.aligner, "beg_of_und_embed")


@dataclass(frozen=True)
class GenHead:
    """A generation head: the parts it needs when ``model.gen_enabled``, what its images are
    made of (``image_input``: VAE "latents" or VQ "codes"), and whether REPA can align its
    hidden states (``repa``). The rest answers what the code asks of the model family:

    - ``family``: the family's name (``ModelConfig.family``, recorded with samples and
      evaluations, and read from configs written before heads had families);
    - ``model``: the class that builds it (``models/build.py`` MODELS); ``composable``: built
      part by part (``models/parts.py``), so every understanding encoder, ``gen_enabled`` and
      REPA choice (the paper's Table 6) combine with it; otherwise its class is fixed: SigLIP
      understanding, generation on, no REPA;
    - ``layout``: the official checkpoint layout (config.json form and key map, ``checkpoint/``);
    - ``codec``: "vae" (latents decoded by a separate VAE) or "vq" (the VQ tokenizer inside the
      model); ``sampler``: "flow" (steps and solver apply) or "autoregressive" (temperature
      applies); ``cfg_weight``: the official classifier-free guidance weight;
    - ``roles``: the speakers of the family's official conversations (user, assistant), as its
      README and demo write them; ``prompt_image_start``: a generation prompt ends in
      ``<begin_of_image>`` (Janus-Pro predicts the first image token after it; JanusFlow puts
      its t_emb in that slot instead, so the tag is not among the prompt's ids)."""
    name: str
    image_input: str
    parts: tuple
    repa: bool
    paper: str
    family: str
    model: str
    composable: bool
    layout: str
    codec: str
    sampler: str
    cfg_weight: float
    roles: tuple
    prompt_image_start: bool

    @property
    def needs_vae(self) -> bool:
        """Its images are latents a VAE encodes and decodes (the VAE is loaded beside the model)."""
        return self.codec == "vae"

    @property
    def needs_vq(self) -> bool:
        """Its images are codes of the VQ tokenizer inside the model (no VAE)."""
        return self.codec == "vq"

    @property
    def autoregressive(self) -> bool:
        """It samples image tokens one at a time (cfg weight and temperature; no steps/solver)."""
        return self.sampler == "autoregressive"


UND_ENCODERS: dict[str, UndEncoder] = {}
GEN_HEADS: dict[str, GenHead] = {}


def register_und_encoder(spec: UndEncoder) -> UndEncoder:
    if spec.name in UND_ENCODERS:
        raise ValueError(f"understanding encoder {spec.name!r} is registered twice")
    if spec.image_input not in IMAGE_INPUTS + (None,):
        raise ValueError(f"{spec.name}: image_input must be one of {IMAGE_INPUTS} or None")
    UND_ENCODERS[spec.name] = spec
    return spec


def register_gen_head(spec: GenHead) -> GenHead:
    if spec.name in GEN_HEADS:
        raise ValueError(f"generation head {spec.name!r} is registered twice")
    if spec.codec not in CODECS or spec.sampler not in SAMPLERS:
        raise ValueError(f"{spec.name}: codec must be one of {CODECS}, sampler one of {SAMPLERS}")
    if (not isinstance(spec.roles, tuple) or len(spec.roles) != 2
            or not all(isinstance(r, str) and r.strip() for r in spec.roles)):
        raise ValueError(f"{spec.name}: roles must be (user, assistant) names, got {spec.roles!r}")
    GEN_HEADS[spec.name] = spec
    return spec


# The SigLIP tower is the part "und_encoder" (the official checkpoint's vision_und_enc_model).
SIGLIP = register_und_encoder(UndEncoder(
    "siglip", "pixels", encoder="und_encoder", aligner="und_aligner", grid="siglip",
    paper="JanusFlow (Table 6 F): decoupled encoders, SigLIP for understanding"))
register_und_encoder(UndEncoder(
    "shared_gen", "latents", encoder="gen_encoder", aligner="gen_aligner", grid="gen",
    paper="Table 6 B: understanding reuses the generation encoder and its aligner"))
register_und_encoder(UndEncoder(
    "separate_gen", "latents", encoder="und_gen_encoder", aligner="und_aligner", grid="gen",
    paper="Table 6 C: a second copy of the generation encoder for understanding"))
register_und_encoder(UndEncoder(
    "none", None, encoder=None, aligner=None, grid=None,
    paper="Table 6 E: generation only"))

RECTIFIED_FLOW = register_gen_head(GenHead(
    "rectified_flow", "latents",
    parts=("gen_encoder", "gen_aligner", "gen_decoder_norm", "gen_decoder_aligner", "gen_decoder"),
    repa=True, paper="JanusFlow: velocity prediction in the VAE latent space (section 3)",
    family="janusflow", model="JanusFlow", composable=True, layout="janusflow",
    codec="vae", sampler="flow", cfg_weight=2.0, roles=("User", "Assistant"), prompt_image_start=False))
# Janus-Pro's model is one fixed class: its parts are all of its modules but the LLM.
# cfg_weight 5: the official generation script's default. Roles: Janus-Pro's README and
# demo/app_januspro.py write "<|User|>"/"<|Assistant|>" where JanusFlow's write "User"/"Assistant".
AUTOREGRESSIVE = register_gen_head(GenHead(
    "autoregressive", "codes",
    parts=("und_encoder", "und_aligner", "gen_vision", "gen_embed", "gen_aligner", "gen_head"),
    repa=False, paper="Janus-Pro (arXiv 2501.17811): next-token prediction of VQ-16 image codes",
    family="janus_pro", model="JanusPro", composable=False, layout="janus_pro",
    codec="vq", sampler="autoregressive", cfg_weight=5.0, roles=("<|User|>", "<|Assistant|>"),
    prompt_image_start=True))


def families() -> tuple:
    """The model families of the registered heads, in registration order."""
    return tuple(dict.fromkeys(h.family for h in GEN_HEADS.values()))


def family_head(family: str) -> Optional[GenHead]:
    """The generation head of ``family`` (the first registered), or None for no such family."""
    return next((h for h in GEN_HEADS.values() if h.family == family), None)


def model_parts(und: UndEncoder, head: GenHead, *, gen_enabled: bool, repa: bool) -> frozenset:
    """The names of the model parts a configuration builds."""
    if not head.composable:
        return frozenset(head.parts)
    parts = set(und.parts)
    if gen_enabled:
        parts |= set(head.parts)
        if repa and head.repa:
            parts.add("repa_projector")
    if repa:
        # SigLIP is REPA's target (it is built whenever REPA is on, gen or not, as before)
        parts.add(SIGLIP.encoder)
    return frozenset(parts)
