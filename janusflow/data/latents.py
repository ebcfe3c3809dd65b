"""``janusflow data latents``: the frozen image encoder's output for the generation source,
computed once -- the VAE's latents (JanusFlow), or the VQ tokenizer's codes (Janus-Pro).

  janusflow data latents --config EXP --out DATA_DIR [--split train] [--batch 8]
                         [--vae SDXL_VAE_DIR | --checkpoint MODEL_DIR]

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

Janus-Pro (the experiment's model generates image tokens): the same command stores the frozen
VQ tokenizer's codes instead, feature ``codes`` (num_tokens,) int32 in raster order, exactly
what ``model.gen_vision.encode`` gives the step; the manifest records the VQ config, the code
shape and a fingerprint of the VQ weights, and the pipeline (``data.gen.latents=true``) yields
``codes`` instead of ``images``. The tokenizer lives inside the model, so its weights come from
a saved model: ``--checkpoint DIR``, else ``train.init_from``; a random VQ is refused.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import re
import time
from typing import NamedTuple

import numpy as np

FEATURE = "latents"
CODES_FEATURE = "codes"
MANIFEST = "janusflow_latents.json"
FORMAT_VERSION = 1
CROP = "center"


class PrecomputedInput(NamedTuple):
    """What a precomputed dataset stores per image for a model (and gen examples then carry)."""
    feature: str
    shape: tuple
    dtype: type


def latent_shape(model_cfg) -> tuple:
    """(h, w, C) of one image's latent for this model."""
    return (model_cfg.latent_size, model_cfg.latent_size, model_cfg.vae.channels)


def precomputed_input(model_cfg) -> PrecomputedInput:
    """The VQ codes of a model generating image tokens (Janus-Pro), else the VAE latents."""
    if model_cfg.generates_image_tokens:
        return PrecomputedInput(CODES_FEATURE, (model_cfg.num_gen_tokens,), np.int32)
    return PrecomputedInput(FEATURE, latent_shape(model_cfg), np.float32)


def _jsonable(x):
    if isinstance(x, (tuple, list)):
        return [_jsonable(v) for v in x]
    return x


def config_fields(dc) -> dict:
    """A config dataclass as the manifest records it (tuples as lists)."""
    return {k: _jsonable(v) for k, v in dataclasses.asdict(dc).items()}


def vae_fields(vae_cfg) -> dict:
    return config_fields(vae_cfg)


def encoder_fields(model_cfg) -> dict:
    """The manifest fields a precomputed dataset must share with the model it feeds: the
    encoder's config, the image size and the stored shape."""
    m, shape = model_cfg, list(precomputed_input(model_cfg).shape)
    if m.generates_image_tokens:
        return {"vq": config_fields(m.vq), "image_size": m.image_size, "code_shape": shape}
    return {"vae": vae_fields(m.vae), "image_size": m.image_size, "latent_shape": shape}


def _flat(fields: dict) -> dict:
    """{"vae": {"channels": 4}, ...} -> {"vae.channels": 4, ...}"""
    out = {}
    for k, v in fields.items():
        out.update({f"{k}.{kk}": vv for kk, vv in v.items()} if isinstance(v, dict) else {k: v})
    return out


def check_compatible(meta: dict, model_cfg, where: str = "") -> None:
    """Raise ValueError naming every field where the stored latents' / codes' encoder or shape
    differs from the model's (each field with both values)."""
    spec = precomputed_input(model_cfg)
    what = "codes" if spec.feature == CODES_FEATURE else "latents"
    bad = []
    if meta.get("format") != FORMAT_VERSION:
        bad.append(f"format: {what} {meta.get('format')!r} vs supported {FORMAT_VERSION}")
    if meta.get("feature", FEATURE) != spec.feature:    # the other family's dataset
        bad.append(f"feature: dataset {meta.get('feature')!r} vs model {spec.feature!r} (VAE latents feed "
                   "a model with a flow head, VQ codes one generating image tokens)")
    else:
        fields = encoder_fields(model_cfg)
        want = _flat(fields)
        got = _flat({k: meta.get(k) or ({} if isinstance(v, dict) else None) for k, v in fields.items()})
        bad += [f"{k}: {what} {got.get(k)!r} vs model {want.get(k)!r}"
                for k in sorted(set(want) | set(got)) if got.get(k) != want.get(k)]
    if bad:
        raise ValueError(f"precomputed {what}{' ' + where if where else ''} do not match the "
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


def check_codes_tokenizer(src_cfg, model_cfg, vq_params) -> None:
    """Refuse training on codes another VQ tokenizer wrote (the config alone cannot tell: the
    recipe's vq phase or another checkpoint gives other weights of the same shape): the
    manifest's fingerprint against this run's frozen ``gen_vision`` parameters."""
    meta = check_source(src_cfg, model_cfg)
    want, got = fingerprint(vq_params), meta.get("vq_fingerprint")
    if got != want:
        raise ValueError(f"data.gen {src_cfg.name!r}: its codes were written by another VQ tokenizer "
                         f"({meta.get('vq_weights', '?')}, fingerprint {str(got)[:12]}) than this run's "
                         f"model.gen_vision (fingerprint {want[:12]}); rebuild them with `janusflow data latents "
                         "--checkpoint` of the model this run starts from")


# ---------------------------------------------------------------------- building
def fingerprint(params) -> str:
    """sha256 over the encoder's parameters (paths, dtypes, shapes, bytes): which weights encoded."""
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


def load_vq_params(cfg, checkpoint: str | None = None):
    """(graphdef, params pure dict, description) of the VQ tokenizer that encodes the codes:
    ``model.gen_vision`` of the saved model ``checkpoint`` (``--checkpoint``), else of
    ``train.init_from``. The tokenizer is trained apart from the model (the recipe's vq phase)
    and no flag allows a random one: codes of a random VQ are refused. The graphdef is the
    experiment's and the parameters are loaded in its ``model.param_dtype``, so the codes are
    computed as the train step computes them."""
    from flax import nnx
    from janusflow import paths
    from janusflow.checkpoint.model_io import load_model, resolve_checkpoint
    from janusflow.configs.schema import ConfigError
    from janusflow.models.build import abstract_model
    from janusflow.train.vae_source import config_diff
    where, path = ("--checkpoint", checkpoint) if checkpoint else ("train.init_from", cfg.train.init_from)
    if not path:
        raise ConfigError("no VQ tokenizer named: these codes would come from a randomly initialised VQ; pass "
                          "--checkpoint DIR (a saved janusflow model holding the trained tokenizer, e.g. a "
                          "recipe's WORKDIR/init) or set train.init_from")
    if paths.as_path(paths.join(path, "model")).is_dir():   # a training workdir, read as a warm start does
        path = paths.join(path, "model")
    # the whole model is read (load_model restores all or nothing); only gen_vision is kept
    model, saved = load_model(resolve_checkpoint(path), dtype=cfg.model.param_dtype)
    if not saved.generates_image_tokens:
        raise ConfigError(f"{where}={path!r}: a {saved.family} model (gen_head {saved.gen_head!r}) holds no "
                          "VQ tokenizer")
    diff = config_diff(saved.vq, cfg.model.vq)
    if diff:
        raise ConfigError(f"{where}={path!r}: its VQ tokenizer differs from the experiment's model.vq in "
                          + ", ".join(f"{k} ({getattr(saved.vq, k)!r} vs {getattr(cfg.model.vq, k)!r})"
                                      for k in diff))
    gd, _ = nnx.split(abstract_model(cfg.model).gen_vision, nnx.Param)
    params = nnx.to_pure_dict(nnx.state(model.gen_vision, nnx.Param))
    where_from = os.path.abspath(path) if paths.is_local(path) else path
    return gd, params, f"model.gen_vision of {where_from}"


def load_encoder(cfg, vae_dir: str | None = None, checkpoint: str | None = None):
    """(jitted encode(params, images) -> what is stored per image, params, description) of the
    frozen encoder the train step would run: the VQ tokenizer of a model generating image
    tokens, else the VAE."""
    import jax
    from flax import nnx
    from janusflow.models.vae import encode_latents
    m = cfg.model
    if m.generates_image_tokens:
        if vae_dir:
            raise ValueError(f"--vae: model.gen_head={m.gen_head!r} trains on VQ codes, not VAE latents; name "
                             "the model whose VQ tokenizer encodes them with --checkpoint DIR")
        gd, params, desc = load_vq_params(cfg, checkpoint)
        return jax.jit(lambda p, x: nnx.merge(gd, p).encode(x)[0]), params, desc
    if checkpoint:
        raise ValueError(f"--checkpoint: model.gen_head={m.gen_head!r} trains on VAE latents and a model "
                         "checkpoint holds no VAE; name the VAE with --vae DIR")
    # fp32 encoder, as in the step (make_vae without a compute dtype)
    gd, params, desc = load_vae_params(cfg, vae_dir)
    return jax.jit(lambda p, x: encode_latents(nnx.merge(gd, p), m.vae, x)), params, desc


def _default_name(builder, feature: str) -> str:
    cfg_name = getattr(getattr(builder, "builder_config", None), "name", "") or ""
    raw = f"{builder.name}_{cfg_name}_{feature}" if cfg_name else f"{builder.name}_{feature}"
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
                  vae_dir: str | None = None, checkpoint: str | None = None, log=print) -> tuple[str, dict]:
    """Encode ``cfg.data.gen``'s ``split`` (comma-separated for several) with the frozen VAE
    (or, for a model generating image tokens, the VQ tokenizer of ``checkpoint``) into a new
    TFDS dataset under ``out``; returns (dataset directory, stats)."""
    import jax
    import tensorflow_datasets as tfds
    from janusflow.data import preprocess as pp
    from janusflow.data.build import write_dataset, check_dataset_name
    from janusflow.data.sources import get_field, open_builder

    src = cfg.data.gen
    if not src.enabled:
        raise ValueError("data.gen names no dataset: nothing to encode")
    if src.latents:
        raise ValueError(f"data.gen ({src.name!r}) is already a latents dataset (data.gen.latents=true); "
                         "point --config/--set at the image source")
    if batch < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")
    m = cfg.model
    spec = precomputed_input(m)
    size, shape, tokens = m.image_size, spec.shape, m.generates_image_tokens
    source_builder = open_builder(src)
    features = source_builder.info.features
    if not isinstance(features, tfds.features.FeaturesDict) or spec.feature in features:
        raise ValueError(f"source {src.name!r} must be a dict of features without a {spec.feature!r} one")
    splits = [s.strip() for s in split.split(",") if s.strip()]
    if not splits:
        raise ValueError(f"--split {split!r} names no split")
    name = name or _default_name(source_builder, spec.feature)
    check_dataset_name(name)
    decoders = _skip_image_decoding(features, src.image)
    try:
        sources = {s: source_builder.as_data_source(split=s, decoders=decoders) for s in splits}
    except NotImplementedError as e:
        raise ValueError(f"dataset {src.name!r} is not stored as array_record ({e})") from None
    out_names = {s: re.sub(r"\[.*$", "", s) for s in splits}      # "train[:10%]" -> "train"
    if len(set(out_names.values())) != len(splits):
        raise ValueError(f"--split {split!r}: two splits would get the same name")

    encode, params, enc_desc = load_encoder(cfg, vae_dir, checkpoint)
    encoder = "VQ tokenizer" if tokens else f"VAE ({m.vae.kind})"
    log(f"{encoder}: {enc_desc}; {spec.feature} {shape} of {size} px centre crops")
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
                    z_all = np.asarray(jax.device_get(encode(params, x)), spec.dtype)[:len(recs)]
                    if z_all.shape[1:] != shape:
                        raise ValueError(f"the {encoder} encodes {size} px to {z_all.shape[1:]}, expected {shape}")
                    for (i, rec), z in zip(recs, z_all):
                        if not tokens and not np.isfinite(z).all():
                            stats["skipped_nonfinite"] += 1
                            continue
                        stats[f"written_{out_names[s]}"] += 1
                        yield i, {**rec, spec.feature: z}
                done = min(lo + batch, total)
                now = time.perf_counter() - t0
                if now - last >= 10 or done == total:
                    last, rate = now, done / max(now, 1e-9)
                    log(f"{spec.feature} {s}: {done}/{total} images, {rate:.2f} images/s, "
                        f"elapsed {_fmt_s(now)}, ETA {_fmt_s((total - done) / max(rate, 1e-9))}")
        return gen

    doc = ("model.gen_vision.encode(image) codes, raster order" if tokens
           else "encode_latents(vae, image): scaled posterior mean")
    feats = tfds.features.FeaturesDict({
        **{k: features[k] for k in features.keys()},
        spec.feature: tfds.features.Tensor(shape=shape, dtype=spec.dtype, doc=doc)})
    what = "VQ codes" if tokens else "VAE latents"
    path, _ = write_dataset(name, feats, {out_names[s]: generate(s) for s in splits}, out,
                     f"{what} of {src.name} ({split}), by janusflow data latents", stats, log)
    written = {k[len("written_"):]: v for k, v in stats.items() if k.startswith("written_")}
    enc = "vq" if tokens else "vae"
    meta = {"format": FORMAT_VERSION, **encoder_fields(m), "dtype": np.dtype(spec.dtype).name, "crop": CROP,
            "feature": spec.feature, f"{enc}_weights": enc_desc, f"{enc}_fingerprint": fingerprint(params),
            "source": {"name": src.name, "data_dir": src.data_dir, "split": split, "image": src.image},
            "splits": written, "stats": dict(sorted(stats.items())), "experiment": cfg.name}
    with open(os.path.join(path, MANIFEST), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
    log(f"train on it with: --set data.gen.name={path} --set data.gen.latents=true")
    return path, dict(stats)
