"""XLA FLOPs of a train step with scanned layers, from depth probes.

XLA's cost analysis counts a while loop's body once, so with ``model.scan_layers`` it sees one
LLM layer and one SigLIP layer whatever the depth: its total cannot be held against the
analytic model count. Layers of a tower are identical, so the step's FLOPs are affine in each
tower's depth. This module compiles the same step unrolled at 1 and 2 LLM layers and 1 and 2
SigLIP blocks (three probes, same devices, mesh, micro-batch, remat and compiler) and
extrapolates: F(L, S) = F(1, 1) + (L - 1) dF_llm + (S - 1) dF_siglip. The analytic count goes
through the same extrapolation as a check that the probes are what they claim (it is exactly
affine in depth).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from janusflow.configs.schema import ExperimentConfig


def probe_config(cfg: ExperimentConfig, llm_layers: int, siglip_layers: int) -> ExperimentConfig:
    """``cfg`` unrolled with ``llm_layers`` LLM layers and ``siglip_layers`` SigLIP blocks
    (REPA reads layer 1: which layer it reads changes no FLOPs)."""
    m = cfg.model
    llm = dataclasses.replace(m.llm, num_layers=llm_layers)
    siglip = dataclasses.replace(m.siglip, num_layers=siglip_layers, select_layer=-1)
    model = dataclasses.replace(m, llm=llm, siglip=siglip, repa_layer=1, scan_layers=False)
    return dataclasses.replace(cfg, model=model)


def depth_probes(cfg: ExperimentConfig, siglip_in_step: bool = True) -> dict:
    """name -> probe config: "base" (1, 1), "llm" (2, 1) and, when SigLIP runs in the step,
    "siglip" (1, 2)."""
    probes = {"base": probe_config(cfg, 1, 1), "llm": probe_config(cfg, 2, 1)}
    if siglip_in_step:
        probes["siglip"] = probe_config(cfg, 1, 2)
    return probes


def extrapolate(values: dict, llm_layers: int, siglip_layers: int) -> float:
    """F(L, S) from the probes' values (affine in each depth)."""
    base = values["base"]
    out = base + (llm_layers - 1) * (values["llm"] - base)
    if "siglip" in values:
        out += (siglip_layers - 1) * (values["siglip"] - base)
    return out


def depth_flops(cfg: ExperimentConfig, compile_one: Callable[[ExperimentConfig], dict],
                model_flops: dict, log: Callable[[str], None] = print) -> dict:
    """Compile the probes with ``compile_one`` (a config -> compile_plan result) and extrapolate
    XLA's and the analytic FLOPs per step to ``cfg``'s depth. ``model_flops``: the analytic
    breakdown of the full step (``compile_plan``'s ``model_flops_breakdown``)."""
    llm_layers, siglip_layers = cfg.model.llm.num_layers, cfg.model.siglip.depth
    probes = depth_probes(cfg, siglip_in_step=model_flops.get("siglip", 0) > 0)
    xla, analytic, seconds = {}, {}, {}
    for name, pc in probes.items():
        log(f"depth probe {name}: {pc.model.llm.num_layers} LLM layer(s), {pc.model.siglip.depth} "
            "SigLIP block(s), unrolled ...")
        r = compile_one(pc)
        if not r["xla_flops_per_step"]:
            raise RuntimeError(f"depth probe {name}: the compiler reported no FLOPs")
        xla[name] = r["xla_flops_per_step"]
        analytic[name] = r["model_flops_per_step"]
        seconds[name] = r["lower_s"] + r["compile_s"]
    xla_total = extrapolate(xla, llm_layers, siglip_layers)
    analytic_total = extrapolate(analytic, llm_layers, siglip_layers)
    return {
        "method": (f"unrolled probes at 1-2 LLM layers x 1-2 SigLIP blocks, extrapolated linearly "
                   f"to {llm_layers} x {siglip_layers}"),
        "probes": {n: {"llm_layers": p.model.llm.num_layers, "siglip_layers": p.model.siglip.depth,
                       "xla_flops_per_step": xla[n], "model_flops_per_step": analytic[n],
                       "lower_compile_s": seconds[n]} for n, p in probes.items()},
        "xla_flops_per_step": xla_total,
        "model_flops_per_step_extrapolated": analytic_total,
        "model_flops_per_step": model_flops["total"],
        "ratio": xla_total / model_flops["total"],
    }
