"""Janus-Pro parity with the official PyTorch modules at full width (issue #26).

    python tests/fixtures/make_janus_pro_fixtures.py --janus JANUS_CHECKOUT --extra-path TIMM_ATTRDICT \\
        --size janus_pro_1b --llm-layers 2 --out DIR
    python experiments/janus_pro_parity_full_width.py DIR

DIR holds the official modules at the Janus-Pro-1B widths (official-layout config.json +
model.safetensors, seeded random fp32 weights) and outputs.npz (inputs and the official
outputs). Ours is loaded from DIR by ``model_io.load_model`` (as tests/test_janus_pro.py loads
tests/fixtures/janus_pro_tiny) and compared exactly as those reduced-width tests compare:
understanding logits, CFG image-token logits of the first steps from a fixed prefix
(teacher-forced, no cache), VQ decode of fixed codes, VQ encode of a fixed image (codes equal,
quantised latents close). The metric is the tests' ``rel_err``: max |ours - official| /
max |official|, against the tests' bound 1e-4. Prints one line per quantity and the peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from janusflow.checkpoint import model_io
from janusflow.sample.ar_generate import uncached_guided_logits

RTOL = 1e-4                      # tests/test_janus_pro.py's bound


def rel_err(ours, ref):
    """tests/test_janus_pro.py's metric: max abs error over max abs reference."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20     # KiB -> GiB


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", help="the --size janus_pro_1b output directory of make_janus_pro_fixtures.py")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    res = {"jax": jax.__version__, "backend": jax.default_backend()}

    t = time.perf_counter()
    m, cfg = model_io.load_model(args.dir)
    ref = dict(np.load(os.path.join(args.dir, "outputs.npz")))
    res["load_s"] = time.perf_counter() - t
    res["config"] = {"llm": f"{cfg.llm.num_layers} layers x {cfg.llm.hidden_size}, vocab {cfg.llm.vocab_size}",
                     "siglip": f"{cfg.siglip.num_layers} layers x {cfg.siglip.width}, {cfg.siglip.image_size} px",
                     "vq": f"{cfg.vq.codebook_size} codes x {cfg.vq.embed_dim}, ch_mult {list(cfg.vq.channel_mult)}"}
    print("loaded", args.dir, json.dumps(res["config"]), f"in {res['load_s']:.1f} s", flush=True)

    def report(name, fn):
        t = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t
        ok = out < RTOL if isinstance(out, float) else bool(out)
        res[name] = {"value": out, "ok": ok, "seconds": round(dt, 1)}
        print(f"{name:28s} {out if not isinstance(out, float) else f'{out:.3e}':>12}  "
              f"{'ok' if ok else 'FAIL'}  ({dt:.1f} s, peak RSS {peak_rss_gb():.1f} GiB)", flush=True)

    report("understanding_logits", lambda: rel_err(
        m.understanding_logits(jnp.asarray(ref["und_ids"]), None, jnp.asarray(ref["und_image_mask"]),
                               und_pixels=jnp.asarray(ref["und_pixels"])), ref["und_logits"]))
    report("cfg_image_logits", lambda: rel_err(
        uncached_guided_logits(m, ref["cfg_tokens"], ref["cfg_fed"], float(ref["cfg_weight"]),
                         ref["cfg_logits"].shape[1]), ref["cfg_logits"]))
    report("vq_decode", lambda: rel_err(m.gen_vision.decode_codes(jnp.asarray(ref["dec_codes"])),
                                        ref["dec_images"]))
    enc = {}

    def encode():
        enc["codes"], enc["zq"] = m.gen_vision.encode(jnp.asarray(ref["enc_images"]))
        return rel_err(enc["zq"], ref["enc_quant"])
    report("vq_encode_quant", encode)
    differ = int((np.asarray(enc["codes"]) != ref["enc_codes"]).sum())
    res["vq_encode_codes_equal"] = {"value": differ == 0, "differing": differ, "of": int(ref["enc_codes"].size),
                                    "ok": differ == 0}
    print(f"{'vq_encode_codes_equal':28s} {str(differ == 0):>12}  {'ok' if differ == 0 else 'FAIL'}  "
          f"({differ} of {ref['enc_codes'].size} codes differ)", flush=True)
    res["peak_rss_gib"] = round(peak_rss_gb(), 2)
    print(f"peak RSS {res['peak_rss_gib']} GiB", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)
    return 0 if all(v["ok"] for v in res.values() if isinstance(v, dict) and "ok" in v) else 1


if __name__ == "__main__":
    raise SystemExit(main())
