"""Machine peak FLOP/s and timing helpers shared by the benchmarks and the MFU metric.

On CPU there is no datasheet peak to divide by, so the peak is *measured*: the median rate of
a large fp32 matmul compiled by the same XLA, in the same process and run as the workload
(the machine is shared and noisy; comparisons made side by side are what count).
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

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


def measure_matmul_peak(n: int = 2048, repeats: int = 7, dtype=jnp.float32) -> float:
    """Median FLOP/s of an n x n x n matmul on the default device (2 n^3 FLOPs)."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    mm = jax.jit(lambda x, y: x @ y)
    med, _ = timed(mm, a, b, repeats=repeats, warmup=2)
    return 2.0 * n ** 3 / med


def peak_flops_per_device(measure_cpu: bool = True) -> tuple[float, str]:
    """(peak FLOP/s of one device, where the number comes from)."""
    kind = jax.devices()[0].device_kind
    for name, peak in KNOWN_PEAKS.items():
        if kind.startswith(name):
            return peak, f"datasheet bf16 peak of {kind}"
    if measure_cpu:
        return measure_matmul_peak(), f"measured fp32 2048^3 matmul on {kind}"
    raise ValueError(f"no known peak for device kind {kind!r}")
