"""The demo's model and what its two tabs do, without the web page.

A :class:`DemoSession` holds one model (with its tokenizer and VAE) for every request. Form
values arrive as the browser sent them (numbers may be floats, strings or None), so each
request is checked here first and any problem raised as :class:`DemoInputError`, whose
message the page shows; the model is only called with checked values.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Callable, Iterator, Optional

import numpy as np

from janusflow.sample.generate import SOLVERS


class DemoInputError(ValueError):
    """Bad form input; its message is shown in the page as it is."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """Bounds on one request, so that a form (or a scripted client) cannot queue hours of work."""
    max_images: int = 8
    max_steps: int = 100
    max_cfg_weight: float = 20.0
    max_new_tokens: int = 512
    max_temperature: float = 2.0
    max_text_chars: int = 2000
    max_seed: int = 2 ** 31 - 1
    batch_size: int = 4            # images per compiled sampler call: one progress tick each


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    n: int
    cfg_weight: float
    steps: int
    solver: str
    seed: int
    trajectory: bool = False


@dataclasses.dataclass(frozen=True)
class UnderstandingRequest:
    question: str
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int


# --------------------------------------------------------------------------- form values
def _number(value, label: str) -> float:
    if isinstance(value, bool) or value is None:
        raise DemoInputError(f"{label}: enter a number")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise DemoInputError(f"{label}: {value[:40]!r} is not a number") from None
    if not isinstance(value, (int, float, np.integer, np.floating)):
        raise DemoInputError(f"{label}: enter a number")
    value = float(value)
    if not math.isfinite(value):
        raise DemoInputError(f"{label}: must be a finite number")
    return value


def whole_number(value, label: str, lo: int, hi: int) -> int:
    """``value`` as an int in [lo, hi]; 4.0 is 4, 4.5 is an error."""
    x = _number(value, label)
    if x != int(x):
        raise DemoInputError(f"{label}: must be a whole number, got {x:g}")
    if not lo <= x <= hi:
        raise DemoInputError(f"{label}: must be from {lo} to {hi}, got {int(x)}")
    return int(x)


def real_number(value, label: str, lo: float, hi: float, *, lo_open: bool = False) -> float:
    """``value`` as a float in [lo, hi] ((lo, hi] with ``lo_open``)."""
    x = _number(value, label)
    if x < lo or x > hi or (lo_open and x == lo):
        low = f"above {lo:g}" if lo_open else f"from {lo:g}"
        raise DemoInputError(f"{label}: must be {low} to {hi:g}, got {x:g}")
    return x


def text(value, label: str, max_chars: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DemoInputError(f"{label}: empty; type some text")
    if len(value) > max_chars:
        raise DemoInputError(f"{label}: {len(value)} characters, at most {max_chars}")
    return value.strip()


def check_generation(prompt, n, cfg_weight, steps, solver, seed, trajectory=False,
                     limits: Limits = Limits()) -> GenerationRequest:
    if solver not in SOLVERS:
        raise DemoInputError(f"Solver: one of {', '.join(SOLVERS)}, got {str(solver)[:40]!r}")
    trajectory = bool(trajectory) if isinstance(trajectory, (bool, np.bool_)) else None
    if trajectory is None:
        raise DemoInputError("Trajectory: expected a checkbox value (true/false)")
    if trajectory and solver != "euler":
        raise DemoInputError("Trajectory: the grid follows the Euler sampler; choose the euler solver "
                             "or untick the trajectory")
    return GenerationRequest(
        prompt=text(prompt, "Prompt", limits.max_text_chars),
        n=whole_number(n, "Number of images", 1, limits.max_images),
        cfg_weight=real_number(cfg_weight, "CFG weight", 0.0, limits.max_cfg_weight),
        steps=whole_number(steps, "Steps", 1, limits.max_steps),
        solver=solver, seed=whole_number(seed, "Seed", 0, limits.max_seed), trajectory=trajectory)


def check_understanding(question, max_new_tokens, temperature, top_p, seed,
                        limits: Limits = Limits()) -> UnderstandingRequest:
    return UnderstandingRequest(
        question=text(question, "Question", limits.max_text_chars),
        max_new_tokens=whole_number(max_new_tokens, "Max new tokens", 1, limits.max_new_tokens),
        temperature=real_number(temperature, "Temperature", 0.0, limits.max_temperature),
        top_p=real_number(top_p, "Top-p", 0.0, 1.0, lo_open=True),
        seed=whole_number(seed, "Seed", 0, limits.max_seed))


def read_upload(path) -> np.ndarray:
    """An uploaded file -> (H, W, 3) uint8; not an image, or too many pixels (checked before
    decoding), is a :class:`DemoInputError`."""
    from janusflow.sample.chat import load_image
    if not path:
        raise DemoInputError("Image: upload an image first")
    if not isinstance(path, str):
        raise DemoInputError("Image: expected an uploaded file")
    try:
        return load_image(path)
    except ValueError as e:
        # load_image names the server's temporary copy; the user knows the file by its own name
        name = os.path.basename(path)
        detail = str(e).split(": ", 1)[-1].replace(path, name)
        raise DemoInputError(f"Image: {name} is not a readable image ({detail})") from None


def trajectory_steps(steps: int, shown: int = 6) -> tuple[int, ...]:
    """Up to ``shown`` step indices spread over [0, steps), first and last included."""
    if steps <= shown:
        return tuple(range(steps))
    return tuple(sorted({round(k * (steps - 1) / (shown - 1)) for k in range(shown)}))


def settings_caption(req: GenerationRequest, index: int, image_tokens: bool = False) -> str:
    how = "image tokens" if image_tokens else f"{req.steps} {req.solver} steps"
    return f"#{index} · seed {req.seed} · CFG {req.cfg_weight:g} · {how}"



# ------------------------------------------------------------------------------ the model
@dataclasses.dataclass
class DemoSession:
    """One loaded model for every request (the page queues requests, one at a time)."""
    model: object
    cfg: object                      # ModelConfig
    tokenizer: object
    vae: object = None
    name: str = "model"
    limits: Limits = Limits()

    @classmethod
    def load(cls, checkpoint: str, vae: Optional[str] = None, tokenizer: Optional[str] = None,
             dtype: Optional[str] = None, limits: Limits = Limits(),
             log: Callable[[str], None] = print) -> "DemoSession":
        """Whatever ``janusflow sample`` / ``chat`` accept: a checkpoint or workdir, its tokenizer
        (or ``tokenizer``), the VAE it decodes with (see ``sample/run.py``)."""
        from janusflow.checkpoint import model_io
        from janusflow.sample import run
        from janusflow.sample.layout import decoding_layout
        path = model_io.resolve_checkpoint(checkpoint, log)
        tok = run.load_tokenizer(path, tokenizer)
        log(f"loading {path}")
        model, cfg = model_io.load_model(path, dtype)
        # answers (and Janus-Pro images) decode token by token: the decoders' layout
        # (sample/layout.py), made once; XLA's full-sequence products run on it as fast
        model, cfg = decoding_layout(model, cfg)
        needs_vae = cfg.gen_enabled or cfg.und.reads_latents
        vae_model = run.load_vae_for(cfg, path, vae, dtype) if needs_vae else None
        return cls(model, cfg, tok, vae_model, name=path, limits=limits)

    @property
    def can_generate(self) -> bool:
        return bool(self.cfg.gen_enabled)

    @property
    def default_cfg_weight(self) -> float:
        """The generation head's official CFG weight (JanusFlow 2, Janus-Pro 5)."""
        return float(self.cfg.head.cfg_weight)

    @property
    def can_understand(self) -> bool:
        return self.cfg.und.understands

    def generate(self, req: GenerationRequest, progress: Callable[[int, int], None] = lambda done, total: None):
        """Images for a checked request: (list of (uint8 image, caption), trajectory grid of
        image #0 or None). Image ``i`` starts from the noise ``janusflow sample --seed S`` gives
        image ``i`` of the first prompt. A Janus-Pro checkpoint samples image tokens
        (``sample/ar_generate.py``): ``steps`` and ``solver`` do not apply and there is no
        trajectory."""
        from janusflow.data.tokenizer import generation_prompt_ids
        from janusflow.sample.generate import initial_noise, iter_generate
        if not self.can_generate:
            raise DemoInputError("this checkpoint has no generation path (gen_enabled=False)")
        ids = [generation_prompt_ids(self.tokenizer, req.prompt, self.cfg.head)]
        images = [None] * req.n
        done = 0
        progress(0, req.n)
        if self.cfg.head.autoregressive:
            from janusflow.sample.ar_generate import iter_generate_ar
            batches = iter_generate_ar(self.model, self.cfg, ids,
                                       num_samples=req.n, cfg_weight=req.cfg_weight, seed=req.seed,
                                       batch_size=self.limits.batch_size, pad_id=self.tokenizer.pad_id)
        else:
            batches = iter_generate(self.model, self.vae, self.cfg, ids, num_samples=req.n,
                                    cfg_weight=req.cfg_weight, steps=req.steps, seed=req.seed,
                                    solver=req.solver, batch_size=self.limits.batch_size,
                                    pad_id=self.tokenizer.pad_id)
        for idx, _, batch in batches:
            for i, img in zip(idx, batch):
                images[i] = img
            done += len(idx)
            progress(done, req.n)
        gallery = [(img, settings_caption(req, i, self.cfg.head.autoregressive)) for i, img in enumerate(images)]
        grid = None
        if req.trajectory and not self.cfg.head.autoregressive:
            from janusflow.shapes.denoise import trajectory_grid
            _, grid = trajectory_grid(self.model, self.vae, self.cfg, self.tokenizer, [req.prompt],
                                      steps=req.steps, cfg_weight=req.cfg_weight,
                                      show=trajectory_steps(req.steps),
                                      noise=np.asarray(initial_noise(self.cfg, req.seed, [0])))
        return gallery, grid

    def answer(self, image: np.ndarray, req: UnderstandingRequest) -> Iterator[str]:
        """The answer so far, after every new token."""
        from janusflow.sample.chat import stream_answer
        if not self.can_understand:
            raise DemoInputError("this checkpoint has no understanding encoder (und_encoder='none')")
        yield from stream_answer(self.model, self.cfg, self.tokenizer, image, req.question,
                                 max_new_tokens=req.max_new_tokens, temperature=req.temperature,
                                 top_p=req.top_p, seed=req.seed, vae=self.vae,
                                 pad_id=self.tokenizer.pad_id)
