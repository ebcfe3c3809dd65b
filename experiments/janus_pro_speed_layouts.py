"""#26: our AR sampler on a scanned model as it ran before (``sample_codes`` on the stacked
layers with a stacked KV cache: the pre-#26 program, still what ``sample_codes`` compiles for a
scanned model) against what ``iter_generate_ar`` runs now (``per_layer_model``: per-layer weights
and a per-layer KV cache), same weights, timed alternately in one process, medians; and whether
the codes are equal. Janus-Pro-1B's width with 2 LLM layers, as experiments/janus_pro_speed.md.

    PYTHONPATH=. nice -n 5 python experiments/janus_pro_speed_layouts.py --tokens 576 --repeats 2
"""
import argparse, dataclasses, statistics, time
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from janusflow.configs.presets import janus_pro_1b
from janusflow.perf.bench_sample import random_model
from janusflow.perf.bench_official import bf16_params
from janusflow.sample.generate import with_compute_dtype
from janusflow.sample.ar_generate import sample_codes, image_keys
from janusflow.sample.layout import per_layer_model
p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--dtypes", default="float32,bfloat16"); p.add_argument("--batches", default="1")
p.add_argument("--tokens", type=int, default=576); p.add_argument("--repeats", type=int, default=2)
a = p.parse_args()
base = janus_pro_1b()
cfg = dataclasses.replace(base, llm=dataclasses.replace(base.llm, num_layers=2, vocab_size=1024),
                          siglip=dataclasses.replace(base.siglip, num_layers=1), repa_layer=1)
assert cfg.scan_layers
print(f"start {time.strftime('%H:%M:%S', time.gmtime())} UTC load {open('/proc/loadavg').read().split()[:3]}", flush=True)
m32 = random_model(dataclasses.replace(cfg, dtype="float32"))
for dt in a.dtypes.split(","):
    m, c = with_compute_dtype(m32, cfg, dt)
    if dt == "bfloat16": m = bf16_params(m)
    per, _ = per_layer_model(m, c)
    for b in map(int, a.batches.split(",")):
        ids = jnp.asarray(np.random.default_rng(b).integers(0, 1024, (b, 32), dtype=np.int32))
        rest = (ids, jnp.ones((b, 32), bool), image_keys(0, range(b)), jnp.float32(5), jnp.float32(1), jnp.int32(0))
        progs = {}
        for name, mod in (("stacked", m), ("per_layer", per)):
            g, st = nnx.split(mod)
            progs[name] = (sample_codes.lower(g, st, *rest, num_tokens=a.tokens).compile(), st)
        codes = {n: np.asarray(f(st, *rest)) for n, (f, st) in progs.items()}      # warm-up
        ts = {n: [] for n in progs}
        for r in range(a.repeats):
            for n in (list(progs) if r % 2 == 0 else list(progs)[::-1]):
                f, st = progs[n]
                t0 = time.perf_counter(); jax.block_until_ready(f(st, *rest)); ts[n].append(time.perf_counter() - t0)
        med = {n: statistics.median(v) for n, v in ts.items()}
        print(f"{dt} batch {b}, {a.tokens} tokens: stacked {med['stacked']:.2f} s ({1e3*med['stacked']/a.tokens:.1f} ms/token), "
              f"per-layer {med['per_layer']:.2f} s ({1e3*med['per_layer']/a.tokens:.1f} ms/token) -> {med['stacked']/med['per_layer']:.2f}x; "
              f"samples {ts}; codes equal: {bool((codes['stacked'] == codes['per_layer']).all())}", flush=True)
print(f"end {time.strftime('%H:%M:%S', time.gmtime())} UTC load {open('/proc/loadavg').read().split()[:3]}", flush=True)
