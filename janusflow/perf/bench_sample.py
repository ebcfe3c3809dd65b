"""``janusflow bench sample``: seconds per ODE step and per image of the compiled sampler, the
FLOPs they imply, the fraction of the machine's measured matmul peak, and the speed-up of the
prompt KV cache over recomputing the prompt at every step (measured side by side).

Weights are random (the timing does not depend on them) and built without running the
initialisers: the abstract model is filled from one small random pool, so a full-width model
costs seconds instead of minutes of per-parameter compilation.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from janusflow.perf import flops
from janusflow.perf import peak as perf
from janusflow.configs import presets
from janusflow.configs.schema import ModelConfig
from janusflow.models.janusflow import JanusFlow
from janusflow.models.build import abstract_model, build_vae
from janusflow.sample.generate import (check_options, decode_images, initial_noise, integrate,
                                       latent_shape, max_prompt_len)

_POOL = 4_194_301          # prime: the repeated pool never lines up with matrix rows


def _fill(abstract, seed: int, std: float):
    graphdef, state = nnx.split(abstract)
    pool = np.random.default_rng(seed).standard_normal(_POOL, dtype=np.float32) * std
    offset = [0]

    def leaf(path, v):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "scale":                     # norm scales: identity
            return jnp.ones(v.shape, v.dtype)
        if len(v.shape) <= 1:                   # biases, GRN gamma/beta: their zero init
            return jnp.zeros(v.shape, v.dtype)
        offset[0] = (offset[0] + 7919) % _POOL
        flat = np.resize(np.roll(pool, offset[0]), int(np.prod(v.shape)))
        return jnp.asarray(flat.reshape(v.shape), v.dtype)

    new = jax.tree_util.tree_map_with_path(leaf, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, new)
    return nnx.merge(graphdef, state)


def random_model(cfg: ModelConfig, seed: int = 0, std: float = 0.02) -> JanusFlow:
    """A JanusFlow with random N(0, std) matrices, unit norm scales and zero biases."""
    return _fill(abstract_model(cfg), seed, std)


def random_vae(cfg: ModelConfig, seed: int = 0, std: float = 0.02):
    return _fill(build_vae(cfg.vae, abstract=True), seed, std)


def _g(x: float) -> str:
    return f"{x / 1e9:.4g}"


def _compile(fn, *args, **static):
    t0 = time.perf_counter()
    compiled = fn.lower(*args, **static).compile()
    return compiled, time.perf_counter() - t0


def _xla_flops(compiled):
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost.get("flops", 0.0)) or None
    except Exception:  # best effort: not every backend reports a cost analysis
        return None


def run(cfg: ModelConfig, batch: int = 1, steps: int = 30, repeats: int = 3, prompt_len: int = 32,
        solver: str = "euler", decode: bool = True, uncached: bool = True, log=print) -> dict:
    """Time the sampler on ``batch`` images (2 * batch LLM rows with CFG) and log a report."""
    check_options(steps, 2.0, solver)
    if prompt_len < 1 or prompt_len > max_prompt_len(cfg):
        raise ValueError(f"prompt_len must be in 1..{max_prompt_len(cfg)}, got {prompt_len}")
    log(f"device {jax.devices()[0].device_kind} x {jax.device_count()}; compute dtype {cfg.dtype}, "
        f"params {cfg.param_dtype}; LLM {cfg.llm.num_layers} layers x {cfg.llm.hidden_size}, "
        f"{cfg.num_gen_tokens} image tokens, latent {latent_shape(cfg)}")
    peaks = {d: perf.measure_matmul_peak(dtype=d) for d in perf.DTYPES}
    peak = peaks[cfg.dtype]
    log("peaks (median 2048^3 matmuls, measured now): "
        + ", ".join(f"{d} {p / 1e9:.1f} GFLOP/s" for d, p in peaks.items()) + f"; MFU against {cfg.dtype}'s")
    t0 = time.perf_counter()
    model = random_model(cfg)
    log(f"random weights in {time.perf_counter() - t0:.1f} s")
    graphdef, state = nnx.split(model)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, cfg.llm.vocab_size, (batch, prompt_len), dtype=np.int32)
    ids, mask = jnp.asarray(ids), jnp.ones((batch, prompt_len), bool)
    z0 = initial_noise(cfg, 0, range(batch))
    w = jnp.float32(2.0)
    out = {"batch": batch, "steps": steps, "prompt_len": prompt_len, "solver": solver,
           "repeats": repeats, "peak_flops": peak, "peaks": peaks}
    variants = ("cached", "uncached") if uncached else ("cached",)
    programs, samples = {}, {name: [] for name in variants}
    for name in variants:
        programs[name] = _compile(integrate, graphdef, state, ids, mask, z0, w, steps=steps,
                                  solver=solver, use_cache=name == "cached", mesh=None)
        jax.block_until_ready(programs[name][0](state, ids, mask, z0, w))      # warm-up
    # alternate the variants so that load from other processes hits both alike
    for _ in range(repeats):
        for name in variants:
            med, _ = perf.timed(programs[name][0], state, ids, mask, z0, w, repeats=1, warmup=0)
            samples[name].append(med)
    for name in variants:
        compiled, ct = programs[name]
        med = statistics.median(samples[name])
        best = min(samples[name])
        out[name] = {"total_s": med, "samples_s": samples[name], "per_step_s": med / steps,
                     "best_per_step_s": best / steps, "compile_s": ct, "xla_flops": _xla_flops(compiled)}
        log(f"{name:9s}: {med / steps:.3f} s/step median, {best / steps:.3f} best ({steps}-step runs "
            f"of {batch} image(s): {', '.join(f'{s:.2f}' for s in samples[name])} s); "
            f"compile {ct:.1f} s")
    census = perf.product_dtypes(programs["cached"][0].as_text())
    out["product_dtypes"] = {f"{op} {'x'.join(i)}->{r}": n for (op, i, r), n in census.items()}
    log(f"products in the compiled sampler: {perf.format_product_dtypes(census)}")
    return _report(cfg, out, decode, peaks, log)


def _report(cfg, out, decode, peaks, log):
    batch, steps, solver = out["batch"], out["steps"], out["solver"]
    vae_s = 0.0
    if decode:
        vae = random_vae(cfg)
        vgd, vstate = nnx.split(vae)
        z = initial_noise(cfg, 1, range(batch))
        compiled, _ = _compile(decode_images, vgd, vstate, z, vae_cfg=cfg.vae)
        vae_s, _ = perf.timed(compiled, vstate, z, repeats=out["repeats"], warmup=1)
        out["vae_decode_s"] = vae_s
        log(f"VAE decode: {vae_s / batch:.3f} s per image ({cfg.vae.kind})")
    f = flops.sampling_flops(cfg, out["prompt_len"], steps, solver)
    if not decode:
        f["per_image"] -= f["vae_decode"]
        f["vae_decode"] = 0.0
    # the machine is shared: measure the peak again after the workload and use the higher one,
    # so the fractions below are never flattered by a slow peak measurement
    after = {d: perf.measure_matmul_peak(dtype=d) for d in peaks}
    log("peaks again after the runs: " + ", ".join(f"{d} {p / 1e9:.1f} GFLOP/s" for d, p in after.items()))
    peaks = {d: max(p, after[d]) for d, p in peaks.items()}
    peak = peaks[cfg.dtype]
    out["peak_flops"], out["peaks"] = peak, peaks
    step_s = out["cached"]["per_step_s"]
    per_image_s = (out["cached"]["total_s"] + vae_s) / batch
    ode_rate = batch * f["per_step"] / step_s
    image_rate = f["per_image"] / per_image_s
    out.update(flops=f, per_image_s=per_image_s, step_fraction_of_peak=ode_rate / peak,
               image_fraction_of_peak=image_rate / peak)
    log(f"model GFLOP per image: {_g(f['per_image'])} = prefill {_g(f['prefill'])} + {steps} steps x "
        f"{_g(f['per_step'])} (LLM {_g(f['per_step_llm'])}, gen codec {_g(f['per_step_gen_codec'])}) "
        f"+ VAE decode {_g(f['vae_decode'])}")
    xla = out["cached"]["xla_flops"]
    if xla:
        # XLA's cost analysis counts a while-loop body once, whatever the trip count
        log(f"XLA cost analysis of the cached program (loop body counted once): {_g(xla)} GFLOP; "
            f"analytic prefill + one step: {_g(batch * (f['prefill'] + f['per_step']))}")
    best_rate = batch * f["per_step"] / out["cached"]["best_per_step_s"]
    out["step_fraction_of_peaks"] = {d: ode_rate / p for d, p in peaks.items()}
    log(f"per ODE step (run time / steps, prefill included): {step_s:.3f} s for {batch} image(s) -> "
        f"{ode_rate / 1e9:.1f} GFLOP/s = {100 * ode_rate / peak:.0f}% of the {cfg.dtype} peak (best run "
        f"{100 * best_rate / peak:.0f}%; " + ", ".join(f"{100 * ode_rate / p:.0f}% of the {d} peak"
                                                       for d, p in peaks.items() if d != cfg.dtype)
        + f"); matmul floor at peak {batch * f['per_step'] / peak:.2f} s")
    log(f"per image: {per_image_s:.2f} s -> {image_rate / 1e9:.1f} GFLOP/s = "
        f"{100 * image_rate / peak:.0f}% of peak")
    if "uncached" in out:
        speedup = out["uncached"]["total_s"] / out["cached"]["total_s"]
        best = out["uncached"]["best_per_step_s"] / out["cached"]["best_per_step_s"]
        out["cache_speedup"], out["cache_speedup_best"] = speedup, best
        fu = flops.sampling_flops(cfg, out["prompt_len"], steps, solver, cached=False)
        log(f"prompt cache: {speedup:.3f}x faster than recomputing the prompt every step (ratio of "
            f"medians; of best runs {best:.3f}x; FLOP ratio {fu['ode'] / (f['ode'] + f['prefill']):.3f})")
    full = flops.sampling_flops(presets.janusflow_1_3b(), out["prompt_len"], 30, "euler")
    out["full_1_3b_flops_per_image"] = full["per_image"]
    log(f"JanusFlow-1.3B (24 layers), 30 Euler steps, CFG, {out['prompt_len']}-token prompt: "
        f"{full['per_image'] / 1e12:.1f} TFLOP per image ({full['per_step'] / 1e12:.2f} per step, "
        f"VAE {full['vae_decode'] / 1e12:.2f}); at this machine's peak >= "
        f"{full['per_image'] / peak:.0f} s per image")
    return out
