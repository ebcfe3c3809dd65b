"""``janusflow bench train``: step time, examples/s, tokens/s and MFU of the jitted train step
on synthetic data (the input pipeline is benchmarked separately by ``bench data``)."""

from __future__ import annotations

import jax

from janusflow import flops, perf
from janusflow.config import ExperimentConfig
from janusflow.parallel.mesh import make_mesh
from janusflow.train.state import init_state
from janusflow.train.step import check_finite, jit_train_step
from janusflow.train.synthetic import synthetic_batch


def run(cfg: ExperimentConfig, repeats: int = 3, log=print) -> dict:
    mesh = make_mesh(cfg.train.mesh)
    log(f"mesh {dict(mesh.shape)} on {jax.device_count()} x {jax.devices()[0].device_kind}")
    peak, peak_src = perf.peak_flops_per_device()
    log(f"peak {peak / 1e9:.1f} GFLOP/s per device ({peak_src})")
    batch = synthetic_batch(cfg)
    parts, state, shardings = init_state(cfg, mesh)
    step = jit_train_step(cfg, parts, shardings, mesh, batch)
    compiled = step.lower(state, batch).compile()
    xla_flops = None
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        xla_flops = float(cost.get("flops", 0.0)) or None
    except Exception:  # cost analysis is best effort (not all backends report it)
        pass
    holder = {"state": state}

    def one():
        holder["state"], m = compiled(holder["state"], batch)
        return m

    m = one()  # warm-up
    check_finite(0, jax.device_get(m))
    med, samples = perf.timed(one, repeats=repeats, warmup=0)
    model = flops.train_step_flops(cfg, batch)
    n_examples = sum(b[next(iter(b))].shape[0] for b in batch.values())
    n_tokens = 0
    for task, b in batch.items():
        if task == "gen":
            n_tokens += b["prompt_ids"].shape[0] * (b["prompt_ids"].shape[1] + 1 + cfg.model.num_gen_tokens)
        else:
            n_tokens += b["ids"].size
    mfu = model["total"] / med / (peak * jax.device_count())
    out = {"step_time_s": med, "step_time_samples": samples, "examples_per_s": n_examples / med,
           "tokens_per_s": n_tokens / med, "model_flops_per_step": model["total"],
           "model_flops_breakdown": model, "xla_flops_per_step": xla_flops,
           "peak_flops_per_device": peak, "mfu": mfu}
    log(f"step {med:.3f} s (median of {repeats}: {', '.join(f'{s:.3f}' for s in samples)})")
    log(f"{n_examples / med:.2f} examples/s, {n_tokens / med:.0f} tokens/s")
    parts_txt = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in model.items() if k != "total")
    log(f"model FLOPs/step {model['total'] / 1e9:.1f} G ({parts_txt})"
        + (f"; XLA cost analysis {xla_flops / 1e9:.1f} G" if xla_flops else ""))
    log(f"MFU {100 * mfu:.1f}% of {peak * jax.device_count() / 1e9:.1f} GFLOP/s")
    return out
