"""``janusflow bench kernels``: the CPU decoding kernels against XLA's path, side by side (the
products on both weight layouts: (in, out) as models store them, (out, in) as the decoders keep
them, and for bf16 (out, in) packed in 12 bits as the decoders keep bf16 weights).

A decoding step at batch 1 reads every weight once for a few multiply-adds, so what matters
is how fast each path streams its operands: the products are reported in GB/s of weights read
(the bytes each path reads over its median time; the packed ones read ~25% fewer), the
one-position attention in ms and GB/s of cache read.
Both paths run alternately in one process (medians of ``repeats``), on random data shaped like
a model's decoding step (defaults: Janus-Pro-1B's MLP weights and 24 layers, 2 rows = one image
with its CFG row, a 608-position cache).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from janusflow.kernels import cpu_decode_attention, cpu_gemv, cpu_gemv_packed
from janusflow.perf.peak import timed_alternately


def compare(progs: dict, args: dict, gbytes, repeats: int) -> dict:
    """The programs (``xla`` and the kernels), each on its ``args``: median seconds, GB/s of
    ``gbytes`` read (one number, or one per program) and each kernel's relative L2 distance from
    XLA's output (``rel_l2``: the largest)."""
    if not isinstance(gbytes, dict):
        gbytes = dict.fromkeys(progs, gbytes)
    out = {name: jax.block_until_ready(p(*args[name])) for name, p in progs.items()}
    errs = {name: float(jnp.linalg.norm(y - out["xla"]) / jnp.linalg.norm(out["xla"]))
            for name, y in out.items() if name != "xla"}
    med = timed_alternately({name: (lambda p=p, a=args[name]: jax.block_until_ready(p(*a)))
                             for name, p in progs.items()}, repeats)
    return {"seconds": med, "gb_per_s": {name: gbytes[name] / s for name, s in med.items()},
            "rel_l2_each": errs, "rel_l2": max(errs.values())}


def line(dtype: str, r: dict) -> str:
    s, g = r["seconds"], r["gb_per_s"]
    parts = [f"{dtype:>9}: XLA {1e3 * s['xla']:7.1f} ms ({g['xla']:5.1f} GB/s)"]
    for name in s:
        if name != "xla":
            parts.append(f"{name} {1e3 * s[name]:7.1f} ms ({g[name]:5.1f} GB/s) {s['xla'] / s[name]:.2f}x, "
                         f"rel. L2 {r['rel_l2_each'][name]:.1e}")
    return "   ".join(parts)


def products(k: int, n: int, layers: int, rows: int, dtype: str, repeats: int) -> dict:
    """``layers`` products x (rows, k) @ w (k, n), each with its own weight (so none stays in
    cache), by XLA's dot, by the kernel on w (k, n) (``kernel``) and by the kernel on the weights
    kept (n, k) as the decoders keep them (``kernel_t``, sample/layout.py), and for bf16 with k a
    multiple of 64 on those packed in 12 bits (``packed``, kernels/cpu_gemv_packed.py)."""
    keys = jax.random.split(jax.random.key(0), layers + 1)
    ws = [jax.random.normal(kk, (k, n), jnp.float32).astype(dtype) for kk in keys[1:]]
    wts = [jnp.asarray(w.T) for w in ws]
    x = jax.random.normal(keys[0], (rows, k), jnp.float32).astype(dtype)

    def chain(dot):
        # each product's input depends on the last one's output, as in a decoding step
        def f(x, ws):
            acc = jnp.zeros((rows, n), jnp.float32)
            for w in ws:
                y = dot(x, w)
                acc = acc + y
                x = x + y[:, :1].astype(x.dtype) * 0
            return acc
        return jax.jit(f)

    progs = {"xla": chain(cpu_gemv.xla_dot), "kernel": chain(cpu_gemv.dot), "kernel_t": chain(cpu_gemv.dot_t)}
    args = {"xla": (x, ws), "kernel": (x, ws), "kernel_t": (x, wts)}
    gbytes = dict.fromkeys(progs, layers * k * n * jnp.dtype(dtype).itemsize / 1e9)
    if cpu_gemv_packed.packable(wts[0]) and cpu_gemv_packed.available():
        packs = [cpu_gemv_packed.pack(w) for w in wts]
        progs["packed"], args["packed"] = chain(cpu_gemv_packed.dot), (x, packs)
        gbytes["packed"] = sum(p.nbytes for p in packs) / 1e9
    return compare(progs, args, gbytes, repeats)


def attention(positions: int, layers: int, rows: int, heads: int, kv_heads: int, head_dim: int, dtype: str,
              repeats: int) -> dict:
    """One query position over ``layers`` caches of ``positions`` (all valid), by XLA's attention
    and by the kernel: {path: (seconds, GB/s of keys and values read)}."""
    keys = jax.random.split(jax.random.key(1), 2 * layers + 1)
    q = jax.random.normal(keys[0], (rows, 1, heads, head_dim), jnp.float32).astype(dtype)
    cache = [jax.random.normal(kk, (rows, positions, kv_heads, head_dim), jnp.float32).astype(dtype)
             for kk in keys[1:]]
    valid = jnp.ones((rows, positions), bool)

    def chain(attend):
        def f(q, cache):
            acc = jnp.zeros(q.shape, jnp.float32)
            for i in range(layers):
                o = attend(q, cache[2 * i], cache[2 * i + 1], valid)
                acc = acc + o.astype(jnp.float32)
                q = q + (o * 0).astype(q.dtype)
            return acc
        return jax.jit(f)

    progs = {"xla": chain(cpu_decode_attention.xla_attend), "kernel": chain(cpu_decode_attention.attend)}
    gbytes = 2 * layers * rows * positions * kv_heads * head_dim * jnp.dtype(dtype).itemsize / 1e9
    return compare(progs, {name: (q, cache) for name in progs}, gbytes, repeats)


def run(*, k: int = 2048, n: int = 5632, layers: int = 24, rows: int = 2, positions: int = 608, heads: int = 16,
        kv_heads: int = 16, head_dim: int = 128, dtypes=("bfloat16", "float32"), repeats: int = 5,
        log=print) -> dict:
    if jax.default_backend() != "cpu":
        raise SystemExit("janusflow bench kernels: the decoding kernels are CPU kernels (backend is "
                         f"{jax.default_backend()})")
    if rows > cpu_gemv.MAX_ROWS:
        raise SystemExit(f"janusflow bench kernels: --rows {rows}: the product kernel takes at most "
                         f"{cpu_gemv.MAX_ROWS} rows (more run on XLA's dot)")
    missing = [name for name, ok in (("cpu_gemv", cpu_gemv.available()), ("cpu_gemv_t", cpu_gemv.available_t()),
                                     ("cpu_decode_attention", cpu_decode_attention.available())) if not ok]
    if missing:
        raise SystemExit(f"janusflow bench kernels: {', '.join(missing)} cannot be used here (the line above says why)")
    results = {}
    log(f"== products: {layers} weights {k} x {n}, x of {rows} rows (medians of {repeats}, alternating)")
    for dtype in dtypes:
        results[f"products_{dtype}"] = products(k, n, layers, rows, dtype, repeats)
        log(line(dtype, results[f"products_{dtype}"]))
    log(f"== one-position attention: {layers} layers, {positions}-position cache, {rows} rows x {heads} heads "
        f"({kv_heads} kv) x {head_dim} (medians of {repeats}, alternating)")
    for dtype in dtypes:
        results[f"attention_{dtype}"] = attention(positions, layers, rows, heads, kv_heads, head_dim, dtype, repeats)
        log(line(dtype, results[f"attention_{dtype}"]))
    return results
