"""Machine peak FLOP/s and timing helpers shared by the benchmarks and the MFU metric.

On CPU there is no datasheet peak to divide by, so the peak is *measured*: the median rate of
a large matmul compiled by the same XLA, in the same process and run as the workload (the
machine is shared and noisy; comparisons made side by side are what count). The peak depends
on the dtype (a CPU with AVX512-BF16 or AMX multiplies bf16 several times faster than fp32),
so it is measured per dtype, with the models' own product (``layers.matmul``: fp32
accumulation), and MFU is taken against the peak of the compute dtype actually used.
"""

from __future__ import annotations

import re
import statistics
import time
from collections import Counter

import jax
import jax.numpy as jnp

from janusflow.models.layers import matmul

DTYPES = ("float32", "bfloat16")

# bf16 dense peaks per chip, for MFU on accelerators where measuring is pointless.
KNOWN_PEAKS = {"TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
               "TPU v6 lite": 918e12, "NVIDIA A100": 312e12, "NVIDIA H100": 989e12}


def timed(fn, *args, repeats: int = 5, warmup: int = 1):
    """Median wall time of ``fn(*args)`` (blocking on its outputs) and all samples."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples), samples


def timed_alternately(fns: dict, repeats: int) -> dict:
    """Median wall time of each blocking call in ``fns`` ({name: fn}), the calls run in turns
    after one warm-up each, so a noisy machine slows them alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def measure_matmul_peak(n: int = 2048, repeats: int = 7, dtype="float32") -> float:
    """Median FLOP/s of an n x n x n ``layers.matmul`` in ``dtype`` on the default device."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
    med, _ = timed(jax.jit(matmul), a, b, repeats=repeats, warmup=2)
    return 2.0 * n ** 3 / med


def peak_flops_per_device(measure_cpu: bool = True, dtype="float32") -> tuple[float, str]:
    """(peak FLOP/s of one device in ``dtype``, where the number comes from)."""
    kind = jax.devices()[0].device_kind
    for name, peak in KNOWN_PEAKS.items():
        if kind.startswith(name):
            return peak, f"datasheet bf16 peak of {kind}"
    if measure_cpu:
        dtype = jnp.dtype(dtype).name
        return measure_matmul_peak(dtype=dtype), f"measured {dtype} 2048^3 matmul on {kind}"
    raise ValueError(f"no known peak for device kind {kind!r}")


def peaks_per_device(measure_cpu: bool = True) -> dict:
    """{dtype name: (peak FLOP/s, source)} for fp32 and bf16 (see :func:`peak_flops_per_device`)."""
    return {d: peak_flops_per_device(measure_cpu, d) for d in DTYPES}


def mfus(flops_per_s_per_device: float, peaks: dict) -> dict:
    """{"mfu_float32": ..., "mfu_bfloat16": ...}: utilisation against each dtype's peak."""
    return {f"mfu_{d}": flops_per_s_per_device / p for d, (p, _) in peaks.items()}


def fast_bf16(peaks: dict, margin: float = 1.3) -> bool:
    """Whether this device multiplies bf16 clearly faster than fp32 (measured peaks): where it
    does not (a CPU without AVX512-BF16/AMX), bf16 only costs accuracy."""
    return peaks["bfloat16"][0] >= margin * peaks["float32"][0]


_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(\w+)\[")
_PRODUCT = re.compile(r"^\s*(?:ROOT\s+)?%[\w.\-]+\s*=\s*(\w+)\[[^=]*?\s(dot|convolution)\(([^)]*)\)")


def product_dtypes(hlo_text: str) -> Counter:
    """Census of the products XLA will run: {(op, operand dtypes, result dtype): count} over
    the dot/convolution instructions of a *compiled* program's HLO text (``compiled.as_text()``).
    On CPU a bf16 model whose products show fp32 operands here runs the slow fp32 kernels."""
    lines = hlo_text.splitlines()
    types = {m.group(1): m.group(2) for m in map(_INSTR.match, lines) if m}
    out = Counter()
    for m in filter(None, map(_PRODUCT.match, lines)):
        operands = tuple(types.get(o.strip().lstrip("%"), "?") for o in m.group(3).split(","))
        out[(m.group(2), operands, m.group(1))] += 1
    return out


def format_product_dtypes(census: Counter) -> str:
    return ", ".join(f"{n} {op} {'x'.join(ins)}->{res}" for (op, ins, res), n in sorted(census.items()))
