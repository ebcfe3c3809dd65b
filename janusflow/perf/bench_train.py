"""``janusflow bench train``: step time, examples/s, tokens/s and MFU of the jitted train step
on synthetic data (the input pipeline is benchmarked separately by ``bench data``).

MFU counts model FLOPs only (``flops.train_step_flops``). A step fed images also runs the
frozen VAE encoder (``--latents`` feeds precomputed latents instead, as ``janusflow data
latents`` datasets do); its FLOPs are reported beside, with the utilisation of model + encoder
FLOPs. ``--compare`` times both variants alternately in one process on one state, with the
peak re-measured every round: on a shared machine that is the fair comparison.
``--compare-dtypes`` alternates the step computing in fp32 and in bf16 the same way."""

from __future__ import annotations

import dataclasses
import statistics
import time

import jax

from janusflow.perf import flops
from janusflow.perf import peak as perf
from janusflow.configs.schema import ExperimentConfig
from janusflow.parallel.mesh import make_mesh
from janusflow.train.state import init_state
from janusflow.train.step import check_finite, jit_train_step
from janusflow.train.synthetic import synthetic_batch


def with_latents(cfg: ExperimentConfig, latents: bool) -> ExperimentConfig:
    return dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, gen=dataclasses.replace(cfg.data.gen, latents=latents)))


def _compile(cfg, parts, shardings, mesh, state, batch):
    """(executable, XLA cost-analysis FLOPs or None, memory plan dict or None)."""
    compiled = jit_train_step(cfg, parts, shardings, mesh, batch).lower(state, batch).compile()
    xla_flops, mem = None, None
    try:
        ma = compiled.memory_analysis()
        mem = {"argument_bytes": ma.argument_size_in_bytes, "temp_bytes": ma.temp_size_in_bytes,
               "output_bytes": ma.output_size_in_bytes, "alias_bytes": ma.alias_size_in_bytes}
    except Exception:  # best effort, as below
        pass
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        xla_flops = float(cost.get("flops", 0.0)) or None
    except Exception:  # cost analysis is best effort (not all backends report it)
        pass
    return compiled, xla_flops, mem


def _counts(cfg, batch) -> tuple[int, int]:
    """(examples, tokens) of one step."""
    n_examples = sum(b[next(iter(b))].shape[0] for b in batch.values())
    n_tokens = 0
    for task, b in batch.items():
        if task == "gen":
            n_tokens += b["prompt_ids"].shape[0] * (b["prompt_ids"].shape[1] + 1 + cfg.model.num_gen_tokens)
        else:
            n_tokens += b["ids"].size
    return n_examples, n_tokens


def _report(cfg, batch, med, samples, peaks, xla_flops, mem, log) -> dict:
    """``peaks``: {dtype: (FLOP/s per device, source)}; MFU is against the compute dtype's."""
    model = flops.train_step_flops(cfg, batch)
    n_examples, n_tokens = _counts(cfg, batch)
    peak = peaks[cfg.model.dtype][0]
    total_peak = peak * jax.device_count()
    mfu = model["total"] / med / total_peak
    enc = flops.train_step_vae_encode_flops(cfg, batch)
    hfu = (model["total"] + enc) / med / total_peak
    out = {"step_time_s": med, "step_time_samples": samples, "examples_per_s": n_examples / med,
           "tokens_per_s": n_tokens / med, "model_flops_per_step": model["total"],
           "model_flops_breakdown": model, "xla_flops_per_step": xla_flops,
           "vae_encode_flops_per_step": enc, "latents": "latents" in batch.get("gen", {}),
           "peak_flops_per_device": peak, "mfu": mfu, "mfu_with_vae_encode": hfu, "memory": mem,
           "peaks_per_device": {d: p for d, (p, _) in peaks.items()},
           **perf.mfus(model["total"] / med / jax.device_count(), peaks)}
    log(f"step {med:.3f} s (median of {len(samples)}: {', '.join(f'{s:.3f}' for s in samples)})")
    log(f"{n_examples / med:.2f} examples/s, {n_tokens / med:.0f} tokens/s")
    parts_txt = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in model.items() if k != "total")
    log(f"model FLOPs/step {model['total'] / 1e9:.1f} G ({parts_txt})"
        + (f"; XLA cost analysis {xla_flops / 1e9:.1f} G" if xla_flops else ""))
    if "gen" in batch:
        log("gen batch: precomputed latents (no VAE encoder in the step)" if out["latents"] else
            f"gen batch: images, VAE encoder in the step {enc / 1e9:.1f} G (not model FLOPs); "
            f"model + encoder {(model['total'] + enc) / 1e9:.1f} G/step = {100 * hfu:.1f}% of peak")
    if mem:
        log(f"compiled memory: arguments {mem['argument_bytes'] / 2**30:.2f} GiB, temporaries "
            f"{mem['temp_bytes'] / 2**30:.2f} GiB")
    others = ", ".join(f"{100 * out[f'mfu_{d}']:.1f}% of the {d} peak {p * jax.device_count() / 1e9:.1f}"
                       for d, (p, _) in peaks.items() if d != cfg.model.dtype)
    log(f"MFU {100 * mfu:.1f}% of {total_peak / 1e9:.1f} GFLOP/s (the {cfg.model.dtype} peak: the compute "
        f"dtype's)" + (f"; {others}" if others else ""))
    return out


def run(cfg: ExperimentConfig, repeats: int = 3, log=print, latents: bool | None = None) -> dict:
    """``latents``: override ``cfg.data.gen.latents`` (gen examples carry precomputed latents)."""
    if latents is not None:
        cfg = with_latents(cfg, latents)
    mesh = make_mesh(cfg.train.mesh)
    log(f"mesh {dict(mesh.shape)} on {jax.device_count()} x {jax.devices()[0].device_kind}")
    peaks = perf.peaks_per_device()
    for d, (p, src) in peaks.items():
        log(f"{d} peak {p / 1e9:.1f} GFLOP/s per device ({src})")
    if cfg.model.dtype == "float32" and perf.fast_bf16(peaks):
        log("bf16 multiplies faster than fp32 here: --set model.dtype=bfloat16 computes in bf16 "
            "(fp32 master weights)")
    batch = synthetic_batch(cfg)
    parts, state, shardings = init_state(cfg, mesh)
    compiled, xla_flops, mem = _compile(cfg, parts, shardings, mesh, state, batch)
    holder = {"state": state}

    def one():
        holder["state"], m = compiled(holder["state"], batch)
        return m

    m = one()  # warm-up
    check_finite(0, jax.device_get(m))
    med, samples = perf.timed(one, repeats=repeats, warmup=0)
    return _report(cfg, batch, med, samples, peaks, xla_flops, mem, log)


def run_compare(cfg: ExperimentConfig, repeats: int = 3, log=print) -> dict:
    """The step fed images (VAE encoder in the step) and fed precomputed latents, timed
    alternately on one state (the order flips every round), the peak measured before every
    round: both variants see the same machine load. Returns {"images": ..., "latents": ...,
    "speedup": images time / latents time}."""
    mesh = make_mesh(cfg.train.mesh)
    log(f"mesh {dict(mesh.shape)} on {jax.device_count()} x {jax.devices()[0].device_kind}")
    if "gen" not in synthetic_batch(cfg):
        raise ValueError("--compare needs generation examples (train.gen_batch > 0, model.gen_enabled)")
    cfgs = {"images": with_latents(cfg, False), "latents": with_latents(cfg, True)}
    batches = {k: synthetic_batch(c) for k, c in cfgs.items()}
    parts, state, shardings = init_state(cfg, mesh)
    built = {k: _compile(cfgs[k], parts, shardings, mesh, state, batches[k]) for k in cfgs}
    holder = {"state": state}

    def one(k):
        holder["state"], m = built[k][0](holder["state"], batches[k])
        return m

    for k in cfgs:  # warm-up
        check_finite(0, jax.device_get(one(k)))
    times, peaks = {k: [] for k in cfgs}, []
    for r in range(repeats):
        peaks.append(perf.peaks_per_device())
        for k in (("images", "latents") if r % 2 == 0 else ("latents", "images")):
            t0 = time.perf_counter()
            jax.block_until_ready(one(k))
            times[k].append(time.perf_counter() - t0)
        log(f"round {r + 1}/{repeats}: {cfg.model.dtype} peak {peaks[-1][cfg.model.dtype][0] / 1e9:.1f} GFLOP/s, images "
            f"{times['images'][-1]:.2f} s, latents {times['latents'][-1]:.2f} s")
    peak = {d: (statistics.median(p[d][0] for p in peaks), f"median of {repeats} measurements")
            for d in peaks[0]}
    out = {"peak_samples": [{d: v for d, (v, _) in p.items()} for p in peaks]}
    for k in cfgs:
        log(f"--- gen batch fed {k} (peaks: medians of {repeats}: "
            + ", ".join(f"{d} {v / 1e9:.1f} GFLOP/s" for d, (v, _) in peak.items()) + ")")
        med = statistics.median(times[k])
        out[k] = _report(cfgs[k], batches[k], med, times[k], peak, built[k][1], built[k][2], log)
    out["speedup"] = out["images"]["step_time_s"] / out["latents"]["step_time_s"]
    log(f"precomputed latents: {out['speedup']:.2f}x faster steps "
        f"(MFU {100 * out['images']['mfu']:.1f}% -> {100 * out['latents']['mfu']:.1f}%)")
    return out


def run_compare_dtypes(cfg: ExperimentConfig, repeats: int = 5, log=print) -> dict:
    """The step computing in fp32 and in bf16 (fp32 master weights both; same init), timed
    alternately (the order flips every round). Returns {"float32": ..., "bfloat16": ...,
    "speedup": fp32 time / bf16 time}; each report has MFU against both dtypes' peaks."""
    mesh = make_mesh(cfg.train.mesh)
    log(f"mesh {dict(mesh.shape)} on {jax.device_count()} x {jax.devices()[0].device_kind}")
    runs = {}
    for d in perf.DTYPES:
        c = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dtype=d))
        batch = synthetic_batch(c)
        parts, state, shardings = init_state(c, mesh)
        built = _compile(c, parts, shardings, mesh, state, batch)
        state, m = built[0](state, batch)                                        # warm-up
        check_finite(0, jax.device_get(m))
        runs[d] = {"cfg": c, "batch": batch, "built": built, "state": state, "times": []}
    for r in range(repeats):
        for d in (perf.DTYPES if r % 2 == 0 else perf.DTYPES[::-1]):
            run = runs[d]
            t0 = time.perf_counter()
            run["state"], m = run["built"][0](run["state"], run["batch"])
            jax.block_until_ready(m)
            run["times"].append(time.perf_counter() - t0)
    peaks = perf.peaks_per_device()
    out = {}
    for d, run in runs.items():
        log(f"--- compute dtype {d}")
        out[d] = _report(run["cfg"], run["batch"], statistics.median(run["times"]), run["times"], peaks,
                         run["built"][1], run["built"][2], log)
    out["speedup"] = out["float32"]["step_time_s"] / out["bfloat16"]["step_time_s"]
    log(f"bf16 steps {out['speedup']:.2f}x faster than fp32 (ratio of medians of {repeats} alternating "
        f"runs); bf16/fp32 peak ratio {peaks['bfloat16'][0] / peaks['float32'][0]:.2f}")
    return out
