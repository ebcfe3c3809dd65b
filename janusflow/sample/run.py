"""What ``janusflow sample`` and ``janusflow chat`` do: load a checkpoint with its VAE and
tokenizer, sample into a directory (resumable), answer a question about an image.

Where the VAE comes from: a pixel-VAE model (tiny configs) needs none; otherwise ``--vae DIR``
when given, else ``<checkpoint>/vae`` when that is a diffusers ``AutoencoderKL`` directory
(``config.json`` + weights), else an error that says so.

Output layout of :func:`sample_to_dir`: ``{prompt:05d}_{sample:02d}.png`` (+ ``.npy`` latents),
``grid.png`` (one row per prompt, the first ``grid_max`` images), ``prompts.jsonl`` and
``sample_config.json`` (the settings and the model's identity: a rerun with other settings or
another checkpoint is refused, a rerun with the same ones samples only the images still
missing, each with the noise it would have had). An output name holding a file that is not a
readable image counts as missing; it is kept beside as ``<name>.png.unreadable``, never
deleted.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import numpy as np

from janusflow.configs.schema import ModelConfig
from janusflow.records import RecordError, iter_jsonl, iter_text_lines, read_json_object
from janusflow.sample import grid as grid_mod
from janusflow.sample.ar_generate import iter_generate_ar
from janusflow.sample.generate import check_options, check_prompts, iter_generate

SETTINGS_NAME = "sample_config.json"


def default_cfg_weight(cfg: ModelConfig, cfg_weight: Optional[float] = None) -> float:
    """``cfg_weight``, or when None the generation head's official default (JanusFlow 2,
    Janus-Pro 5)."""
    if cfg_weight is not None:
        return float(cfg_weight)
    return float(cfg.head.cfg_weight)


# ------------------------------------------------------------------------------- loading
def find_vae_dir(checkpoint: str, vae_path: Optional[str] = None) -> Optional[str]:
    if vae_path:
        return vae_path
    inside = os.path.join(checkpoint, "vae")
    return inside if os.path.isfile(os.path.join(inside, "config.json")) else None


def load_vae_for(cfg: ModelConfig, checkpoint: str, vae_path: Optional[str] = None,
                 dtype: Optional[str] = None):
    """The VAE that decodes ``cfg``'s latents (see the module docstring for where from)."""

    from janusflow.checkpoint import hf
    from janusflow.models.build import build_vae
    if not cfg.head.needs_vae:
        return None                    # images come from the VQ tokenizer inside the model
    if cfg.vae.kind == "pixel":
        return build_vae(cfg.vae)
    path = find_vae_dir(checkpoint, vae_path)
    if path is None:
        raise FileNotFoundError(
            f"{checkpoint} carries no VAE (no vae/ subdirectory with a config.json) and the model "
            f"decodes with a KL VAE: pass --vae DIR, a diffusers AutoencoderKL directory such as "
            f"stabilityai/sdxl-vae")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--vae {path}: no such directory")
    vae, vcfg = hf.load_vae(path, dtype or "float32")
    if vcfg.latent_channels != cfg.vae.channels or vcfg.downsample != cfg.vae.downsample:
        raise ValueError(f"VAE {path} has {vcfg.latent_channels} latent channels and downsamples "
                         f"{vcfg.downsample}x, the model expects {cfg.vae.channels} and "
                         f"{cfg.vae.downsample}x")
    return vae


def load_tokenizer(checkpoint: str, tokenizer_path: Optional[str] = None):
    from janusflow.data.tokenizer import Tokenizer
    path = tokenizer_path or checkpoint
    try:
        return Tokenizer.load(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}; pass --tokenizer PATH (a tokenizer.json or a directory "
                                f"holding one) or give token ids (--prompt-ids)") from None


def read_prompts(prompts: Sequence[str] = (), prompts_file: Optional[str] = None) -> list[str]:
    """``--prompt`` values then the lines of ``--prompts-file`` (.txt: one prompt a line, blank
    lines skipped; .jsonl: objects with a "prompt" field, as GenEval's metadata)."""
    out = list(prompts or [])
    if prompts_file:
        if not os.path.isfile(prompts_file):
            raise FileNotFoundError(f"--prompts-file {prompts_file}: no such file")
        # A bad line stops here (named): skipping it would shift every later prompt's index.
        if prompts_file.endswith(".jsonl"):
            for _, item in iter_jsonl(prompts_file):
                if isinstance(item, RecordError):
                    raise item
                out.append(item.get_str("prompt", nonempty=True))
        else:
            for _, line in iter_text_lines(prompts_file):
                if isinstance(line, RecordError):
                    raise line
                if line.strip():
                    out.append(line)
    for i, p in enumerate(out):
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"prompt {i} is empty")
    return out


def parse_ids(text: str) -> list[int]:
    try:
        ids = [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise ValueError(f"--prompt-ids {text!r}: expected comma-separated integers") from None
    if not ids:
        raise ValueError(f"--prompt-ids {text!r}: empty prompt")
    return ids


# ------------------------------------------------------------------------------ sampling
def _names(n_prompts: int, n: int) -> list[str]:
    return [f"{p:05d}_{s:02d}" for p in range(n_prompts) for s in range(n)]


def _comparable(settings: dict) -> dict:
    # the same weights reached by another path (a copied or moved checkpoint) are the same model
    model = settings.get("model")
    if isinstance(model, dict):
        model = {k: v for k, v in model.items() if k != "checkpoint"}
    return {**settings, "model": model}


def _check_settings(out_dir: str, settings: dict):
    path = os.path.join(out_dir, SETTINGS_NAME)
    if os.path.isfile(path):
        old = read_json_object(path, hint="use a new --out directory")
        old, new = _comparable(old), _comparable(settings)
        diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        if diff:
            what = ("another model" if diff == ["model"] else f"other settings ({', '.join(diff)} differ)")
            raise ValueError(f"{out_dir} holds samples made with {what} (see {path}); "
                             f"use a new --out directory")
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(settings, fh, indent=1)
    os.replace(tmp, path)


def sample_to_dir(model, vae, cfg: ModelConfig, prompt_ids: Sequence[Sequence[int]], out_dir: str, *,
                  prompts_text: Optional[Sequence[str]] = None, n: int = 4, cfg_weight: float = 2.0,
                  steps: int = 30, seed: int = 0, solver: str = "euler", save_latents: bool = False,
                  batch_size: Optional[int] = 8, mesh=None, pad_id: int = 0, grid_max: int = 64,
                  progress: bool = True, log=print, model_id: Optional[dict] = None,
                  temperature: float = 1.0) -> dict:
    """Sample ``n`` images per prompt into ``out_dir``, writing each batch as it finishes and
    skipping images already there. A Janus-Pro model samples image tokens autoregressively
    (``sample/ar_generate.py``: ``cfg_weight`` and ``temperature`` apply, ``steps`` and ``solver``
    do not; ``save_latents`` saves its image codes). ``model_id`` (e.g. :func:`model_identity`) is recorded and
    must match on a rerun. Returns counts and the grid path."""
    prompts = check_prompts(cfg, prompt_ids)
    check_options(steps, cfg_weight, solver, n)
    os.makedirs(out_dir, exist_ok=True)
    settings = {"prompt_ids": [list(p) for p in prompts], "n": n,
                "cfg_weight": float(cfg_weight), "steps": steps, "seed": seed,
                "solver": solver, "image_size": cfg.image_size, "model": model_id}
    if cfg.head.autoregressive:
        settings.update(family=cfg.family, temperature=float(temperature), steps=None, solver=None)
    _check_settings(out_dir, settings)
    if prompts_text is not None:
        with open(os.path.join(out_dir, "prompts.jsonl"), "w", encoding="utf-8") as fh:
            for i, t in enumerate(prompts_text):
                fh.write(json.dumps({"index": i, "prompt": t}) + "\n")
    names = _names(len(prompts), n)

    def done(name):
        png = os.path.join(out_dir, name + ".png")
        return (os.path.isfile(png) and _readable_or_set_aside(png, cfg.image_size, log)
                and (not save_latents or os.path.isfile(os.path.join(out_dir, name + ".npy"))))

    missing = [i for i, name in enumerate(names) if not done(name)]
    if len(missing) < len(names):
        log(f"{len(names) - len(missing)} of {len(names)} images already in {out_dir}: skipped")
    if missing:
        rows = [prompts[i // n] for i in missing]
        if cfg.head.autoregressive:
            batches = iter_generate_ar(model, cfg, rows, cfg_weight=cfg_weight, temperature=temperature,
                                       seed=seed, pad_id=pad_id, batch_size=batch_size, mesh=mesh,
                                       key_ids=missing)
        else:
            batches = iter_generate(model, vae, cfg, rows, cfg_weight=cfg_weight, steps=steps, seed=seed,
                                    solver=solver, batch_size=batch_size, mesh=mesh, pad_id=pad_id,
                                    noise_ids=missing, progress=progress)
        for idx, latents, images in batches:
            for j, local in enumerate(idx):
                name = names[missing[local]]
                if save_latents:
                    grid_mod.save_npy(os.path.join(out_dir, name + ".npy"), latents[j])
                grid_mod.save_png(os.path.join(out_dir, name + ".png"), images[j])
    shown = names[:max(0, grid_max)]
    grid_path = None
    if shown:
        from janusflow.data.preprocess import BadExample, decode_image, read_image_file
        imgs = []
        for name in shown:
            path = os.path.join(out_dir, name + ".png")
            try:
                imgs.append(decode_image(read_image_file(path)))
            except BadExample as e:
                raise ValueError(f"{path}: unreadable sample ({e.detail})") from None
        grid_path = os.path.join(out_dir, "grid.png")
        grid_mod.save_png(grid_path, grid_mod.make_grid(np.stack(imgs), ncols=n))
    return {"generated": len(missing), "skipped": len(names) - len(missing), "total": len(names),
            "out_dir": out_dir, "grid": grid_path}


def _readable_or_set_aside(png: str, size: int, log) -> bool:
    """True if ``png`` decodes as a ``size`` x ``size`` image; otherwise rename it to
    ``.unreadable`` (we may not have written it: never delete it) so the sample is made again,
    and say so in one line. The size is checked from the header, before decoding."""
    from PIL import Image
    try:
        with Image.open(png) as im:
            if im.size != (size, size):
                raise ValueError(f"{im.size[0]}x{im.size[1]}, samples are {size}x{size}")
            im.load()
        return True
    except Exception as e:             # PIL raises several unrelated types for garbage
        aside = png + ".unreadable"
        n = 1
        while os.path.exists(aside):
            aside, n = f"{png}.unreadable{n}", n + 1
        os.replace(png, aside)
        log(f"{png}: not a readable sample ({type(e).__name__}: {e}); moved to {aside}, "
            "sampling it again")
        return False


def model_identity(checkpoint: str, **extra) -> dict:
    """What ``sample_config.json`` records of the model: its path and a cheap fingerprint of
    its files (:func:`janusflow.checkpoint.model_io.fingerprint`), plus ``extra`` (dtypes)."""
    from janusflow import paths
    from janusflow.checkpoint.model_io import fingerprint
    where = os.path.abspath(checkpoint) if paths.is_local(checkpoint) else checkpoint
    return {"checkpoint": where, "fingerprint": fingerprint(checkpoint), **extra}


def default_mesh():
    """A data-parallel mesh over every device when there are several, else None."""
    import jax

    from janusflow.configs.schema import MeshConfig
    from janusflow.parallel.mesh import make_mesh
    return make_mesh(MeshConfig(data=-1)) if jax.device_count() > 1 else None
