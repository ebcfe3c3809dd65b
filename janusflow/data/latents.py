"""``janusflow data latents``: the frozen VAE's latents of the generation source, computed once.

  janusflow data latents --config EXP --out DATA_DIR [--split train] [--batch 8] [--vae SDXL_VAE_DIR]

The VAE is frozen and the step encodes with the posterior mean, so a latent is a pure function
of the (cropped) image: encoding it once instead of in every step removes the encoder from the
step (0.62 TFLOP per 384 px image for the SDXL-VAE, more than the rest of a 2-layer model's
step). Large diffusion trainings precompute latents the same way.

Format: a TFDS dataset (array_record), written with the same builder as ``janusflow data
build``. Every record of the source is copied as it is (its images stay encoded bytes, its
captions and other features unchanged) plus one feature ``latents`` (h, w, C) float32, exactly
what ``encode_latents`` returns. A TFDS dataset, not custom shards, because the pipeline
already reads those with exact per-process shards, a global per-epoch shuffle and a
checkpointable position; the experiment's key mapping (``data.gen.caption`` ...) stays valid.
Beside ``dataset_info.json`` lies ``janusflow_latents.json``: the VAE config, image size, crop,
latent shape, which VAE weights produced them (and a fingerprint), the source and counts. The
pipeline refuses a latents dataset whose VAE config or latent shape differs from the model's.

Use it with ``--set data.gen.name=<printed dir> --set data.gen.latents=true``: generation
examples then carry ``latents`` instead of ``images`` (prompt ids, CFG dropout and REPA pixels
unchanged; the REPA pixels come from the same centre crop the latents were encoded from).

The crop is the centre square (``resize_short_side_random_crop(..., rng=None)``): precomputed
latents give up the random-crop augmentation of non-square images (square images, e.g. the
shapes dataset, have only one crop).

Which VAE: ``--vae DIR`` (a diffusers AutoencoderKL directory, e.g. the real SDXL-VAE: the
trained model then learns that latent space and sampling decodes with the same ``--vae``);
without it, the VAE a fresh run of the experiment initialises (``train.seed``), i.e. exactly
the one the train step would encode with.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import re
import time

import numpy as np

FEATURE = "latents"
MANIFEST = "janusflow_latents.json"
FORMAT_VERSION = 1
CROP = "center"


def latent_shape(model_cfg) -> tuple:
    """(h, w, C) of one image's latent for this model."""
    return (model_cfg.latent_size, model_cfg.latent_size, model_cfg.vae.channels)


def _jsonable(x):
    if isinstance(x, (tuple, list)):
        return [_jsonable(v) for v in x]
    return x


def vae_fields(vae_cfg) -> dict:
    return {k: _jsonable(v) for k, v in dataclasses.asdict(vae_cfg).items()}


def check_compatible(meta: dict, model_cfg, where: str = "") -> None:
    """Raise ValueError naming every field where the latents' VAE / shape differs from the
    model's (each field with both values)."""
    want = {**{f"vae.{k}": v for k, v in vae_fields(model_cfg.vae).items()},
            "image_size": model_cfg.image_size, "latent_shape": list(latent_shape(model_cfg))}
    got = {**{f"vae.{k}": v for k, v in (meta.get("vae") or {}).items()},
           "image_size": meta.get("image_size"), "latent_shape": meta.get("latent_shape")}
    bad = [f"{k}: latents {got.get(k)!r} vs model {want.get(k)!r}"
           for k in sorted(set(want) | set(got)) if got.get(k) != want.get(k)]
    if meta.get("format") != FORMAT_VERSION:
        bad.insert(0, f"format: latents {meta.get('format')!r} vs supported {FORMAT_VERSION}")
    if bad:
        raise ValueError(f"precomputed latents{' ' + where if where else ''} do not match the "
                         f"model: {'; '.join(bad)}. Rebuild them with `janusflow data latents` "
                         "for this experiment")


def read_manifest(dataset_dir: str) -> dict:
    path = os.path.join(os.fspath(dataset_dir), MANIFEST)
    if not os.path.isfile(path):
        raise ValueError(f"{os.fspath(dataset_dir)} has no {MANIFEST}: it is not a latents dataset "
                         "written by `janusflow data latents` (data.gen.latents=true needs one)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def check_source(src_cfg, model_cfg) -> dict:
    """The manifest of the latents dataset ``src_cfg`` names, checked against the model."""
    from janusflow.data.sources import open_builder
    builder = open_builder(src_cfg)
    meta = read_manifest(builder.data_dir)
    check_compatible(meta, model_cfg, f"{src_cfg.name!r}")
    return meta


# ---------------------------------------------------------------------- building
def fingerprint(params) -> str:
    """sha256 over the VAE parameters (paths, dtypes, shapes, bytes): which weights encoded."""
    import jax
    h = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(params)[0], key=lambda kv: str(kv[0])):
        a = np.asarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def load_vae_params(cfg, vae_dir: str | None = None):
    """(graphdef, params pure dict, description) of the VAE that encodes the latents: ``vae_dir``
    (``--vae``), else the experiment's ``train.vae_from``, else -- only where
    ``model.vae_random_ok`` allows it -- the random VAE a fresh run of the experiment builds."""
    from flax import nnx
    from janusflow.configs.schema import ConfigError
    from janusflow.models.build import build_vae
    from janusflow.train.state import random_vae_params, vae_params
    from janusflow.train.vae_source import load_vae_module
    vae_dir = vae_dir or cfg.train.vae_from
    if vae_dir:
        vae = load_vae_module(vae_dir, cfg.model.vae, where="--vae" if vae_dir != cfg.train.vae_from
                              else "train.vae_from")
        gd, _ = nnx.split(vae, nnx.Param)
        return gd, vae_params(vae), f"diffusers AutoencoderKL {os.path.abspath(vae_dir)}"
    if not cfg.model.vae_random_ok:
        raise ConfigError("no VAE named: these latents would come from a randomly initialised VAE; pass "
                          "--vae DIR (a diffusers AutoencoderKL directory such as stabilityai/sdxl-vae) or "
                          "set train.vae_from, or model.vae_random_ok=true if a random VAE is intended")
    # The VAE a fresh run builds (its own RNG stream, train/state.py), without the model.
    gd, _ = nnx.split(build_vae(cfg.model.vae, abstract=True), nnx.Param)
    return gd, random_vae_params(cfg), f"initialised by a fresh run of {cfg.name!r} (train.seed={cfg.train.seed})"


def _default_name(builder) -> str:
    cfg_name = getattr(getattr(builder, "builder_config", None), "name", "") or ""
    raw = f"{builder.name}_{cfg_name}_latents" if cfg_name else f"{builder.name}_latents"
    name = re.sub(r"[^a-z0-9_]+", "_", raw.lower()).strip("_")
    return name if re.match(r"^[a-z]", name) else f"d_{name}"


def _skip_image_decoding(features, image_key: str):
    """Decoders that keep every top-level image (and the configured one) as its encoded bytes:
    they are copied, never re-encoded."""
    import tensorflow_datasets as tfds
    from janusflow.data.sources import image_decoders
    dec = {k: tfds.decode.SkipDecoding() for k, f in features.items() if isinstance(f, tfds.features.Image)}
    nested = image_decoders(features, image_key) or {}
    for k, v in nested.items():
        dec.setdefault(k, v)
    return dec


def _fmt_s(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def build_latents(cfg, out: str, split: str = "train", batch: int = 8, name: str | None = None,
                  vae_dir: str | None = None, log=print) -> tuple[str, dict]:
    """Encode ``cfg.data.gen``'s ``split`` (comma-separated for several) with the frozen VAE
    into a new TFDS dataset under ``out``; returns (dataset directory, stats)."""
    import jax
    import tensorflow_datasets as tfds
    from flax import nnx
    from janusflow.data import preprocess as pp
    from janusflow.data.build import write_dataset, check_dataset_name
    from janusflow.data.sources import get_field, open_builder
    from janusflow.models.vae import encode_latents

    src = cfg.data.gen
    if not src.enabled:
        raise ValueError("data.gen names no dataset: nothing to encode")
    if src.latents:
        raise ValueError(f"data.gen ({src.name!r}) is already a latents dataset (data.gen.latents=true); "
                         "point --config/--set at the image source")
    if batch < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")
    m = cfg.model
    size, shape = m.image_size, latent_shape(m)
    source_builder = open_builder(src)
    features = source_builder.info.features
    if not isinstance(features, tfds.features.FeaturesDict) or FEATURE in features:
        raise ValueError(f"source {src.name!r} must be a dict of features without a {FEATURE!r} one")
    splits = [s.strip() for s in split.split(",") if s.strip()]
    if not splits:
        raise ValueError(f"--split {split!r} names no split")
    name = name or _default_name(source_builder)
    check_dataset_name(name)
    decoders = _skip_image_decoding(features, src.image)
    try:
        sources = {s: source_builder.as_data_source(split=s, decoders=decoders) for s in splits}
    except NotImplementedError as e:
        raise ValueError(f"dataset {src.name!r} is not stored as array_record ({e})") from None
    out_names = {s: re.sub(r"\[.*$", "", s) for s in splits}      # "train[:10%]" -> "train"
    if len(set(out_names.values())) != len(splits):
        raise ValueError(f"--split {split!r}: two splits would get the same name")

    # fp32 encoder, as in the step (make_vae without a compute dtype)
    gd, params, vae_desc = load_vae_params(cfg, vae_dir)
    log(f"VAE ({m.vae.kind}): {vae_desc}; latents {shape} of {size} px centre crops")
    encode = jax.jit(lambda p, x: encode_latents(nnx.merge(gd, p), m.vae, x))
    stats = collections.Counter()

    def generate(s):
        def gen():
            ds, total = sources[s], len(sources[s])
            t0, done, last = time.perf_counter(), 0, 0.0
            for lo in range(0, total, batch):
                recs, imgs = [], []
                for i in range(lo, min(lo + batch, total)):
                    flags: list = []
                    try:
                        rec = ds[i]
                        imgs.append(pp.to_vae(pp.resize_short_side_random_crop(
                            pp.decode_image(get_field(rec, src.image), flags), size, None)))
                    except Exception as e:  # noqa: BLE001 - unreadable records are counted, not fatal
                        stats[f"skipped_{e.reason if isinstance(e, pp.BadExample) else 'bad_record'}"] += 1
                        continue
                    stats.update(flags)
                    recs.append((i, rec))
                if imgs:
                    x = np.stack(imgs)
                    if len(x) < batch:          # one compiled shape: pad the last batch
                        x = np.concatenate([x, np.zeros((batch - len(x), *x.shape[1:]), x.dtype)])
                    lat = np.asarray(jax.device_get(encode(params, x)), np.float32)[:len(recs)]
                    if lat.shape[1:] != shape:
                        raise ValueError(f"the VAE encodes {size} px to {lat.shape[1:]}, expected {shape}")
                    for (i, rec), z in zip(recs, lat):
                        if not np.isfinite(z).all():
                            stats["skipped_nonfinite"] += 1
                            continue
                        stats[f"written_{out_names[s]}"] += 1
                        yield i, {**rec, FEATURE: z}
                done = min(lo + batch, total)
                now = time.perf_counter() - t0
                if now - last >= 10 or done == total:
                    last, rate = now, done / max(now, 1e-9)
                    log(f"latents {s}: {done}/{total} images, {rate:.2f} images/s, "
                        f"elapsed {_fmt_s(now)}, ETA {_fmt_s((total - done) / max(rate, 1e-9))}")
        return gen

    feats = tfds.features.FeaturesDict({
        **{k: features[k] for k in features.keys()},
        FEATURE: tfds.features.Tensor(shape=shape, dtype=np.float32,
                                      doc="encode_latents(vae, image): scaled posterior mean")})
    path, _ = write_dataset(name, feats, {out_names[s]: generate(s) for s in splits}, out,
                     f"VAE latents of {src.name} ({split}), by janusflow data latents", stats, log)
    written = {k[len("written_"):]: v for k, v in stats.items() if k.startswith("written_")}
    meta = {"format": FORMAT_VERSION, "vae": vae_fields(m.vae), "image_size": size,
            "latent_shape": list(shape), "dtype": "float32", "crop": CROP, "feature": FEATURE,
            "vae_weights": vae_desc, "vae_fingerprint": fingerprint(params),
            "source": {"name": src.name, "data_dir": src.data_dir, "split": split, "image": src.image},
            "splits": written, "stats": dict(sorted(stats.items())), "experiment": cfg.name}
    with open(os.path.join(path, MANIFEST), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
    log(f"train on it with: --set data.gen.name={path} --set data.gen.latents=true")
    return path, dict(stats)
