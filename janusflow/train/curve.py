"""The shapes learning curve of a recipe run (``recipe.curve_every``): every so many steps of
the generation phases, the EMA model's shapes benchmark and its one-object diagnostic (shape
right, colour right, exactly one object), against the generation examples trained on so far,
appended to ``workdir/curve.jsonl`` and drawn as ``workdir/curve.png``, with each point's
sample grids in ``workdir/curve/<phase>_<step>/``."""

from __future__ import annotations

import json
import os
import time

CURVE_JSONL = "curve.jsonl"
CURVE_PNG = "curve.png"
CURVE_DIR = "curve"     # each point's sample grids: curve/<phase>_<step>/grid_<tag>.png


class ShapesCurve:
    """``probe(phase, gen_examples_before, gen_batch)`` -> ``fn(step, model, vae)`` for
    ``loop.train``'s ``probe``: scores the model and appends one row per call."""

    def __init__(self, cfg, workdir: str, tokenizer, log=print):
        self.cfg, self.workdir, self.tok, self.log = cfg, workdir, tokenizer, log
        self.t0 = time.perf_counter()

    def probe(self, phase: str, gen_examples_before: int, gen_batch: int):
        def fn(step, model, vae):
            row = self.score(model, vae, os.path.join(self.workdir, CURVE_DIR, f"{phase}_{step:06d}"))
            row.update(phase=phase, step=step, gen_examples=gen_examples_before + step * gen_batch,
                       minutes=(time.perf_counter() - self.t0) / 60)
            append_row(self.workdir, row)
            o = row["one_object"]
            self.log(f"curve: {phase} step {step} ({row['gen_examples']} generation examples): one-object shape right "
                     f"{o['shape_acc']:.2f}, colour right {o['color_acc']:.2f}, exactly one {o['one_component']:.2f}; "
                     f"benchmark {row['overall']:.3f} ({row['eval_seconds']:.0f} s)")
            plot(self.workdir)
        return fn

    def score(self, model, vae, outdir: str | None = None) -> dict:
        """The benchmark's report; with ``outdir`` its sample grids and per-image results too."""
        from janusflow.eval.geneval import model_generate_fn
        from janusflow.shapes import bench as shapes_bench
        r = self.cfg.recipe
        t = time.perf_counter()
        fn = model_generate_fn(model, vae, self.cfg.model, self.tok, cfg_weight=r.cfg_weight, steps=r.sample_steps)
        # the same prompts and noise at every point, other prompts' order than the final eval's
        res = shapes_bench.run_shapes_bench(fn, r.curve_prompts_per_tag, r.eval_images, seed=0, batch_size=64,
                                            sample_seed=self.cfg.train.seed, outdir=outdir)
        return {"overall": res["overall"], "per_tag": res["per_tag"], "one_object": res["one_object"],
                "n_images": len(res["per_tag"]) * r.curve_prompts_per_tag * r.eval_images,
                "eval_seconds": time.perf_counter() - t}


def append_row(workdir: str, row: dict) -> None:
    with open(os.path.join(workdir, CURVE_JSONL), "a") as f:
        f.write(json.dumps(row) + "\n")


def read_rows(path: str) -> list:
    """The curve's rows in training order; a point scored twice (a resumed phase) keeps its
    last score. A line that is not a JSON object with the expected fields is named and skipped."""
    rows = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                key = (str(row["phase"]), int(row["step"]))
                float(row["gen_examples"]), float(row["overall"]), dict(row["one_object"])
            except (ValueError, KeyError, TypeError) as e:
                print(f"{path}:{n}: not a curve row ({type(e).__name__}: {e}); skipped")
                continue
            rows[key] = row
    return sorted(rows.values(), key=lambda r: r["gen_examples"])


def plot(workdir: str, out_png: str | None = None) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = read_rows(os.path.join(workdir, CURVE_JSONL))
    x = [r["gen_examples"] / 1000 for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("shape_acc", "one-object: shape right"), ("color_acc", "one-object: colour right")):
        ax.plot(x, [r["one_object"].get(key) for r in rows], marker="o", label=label)
    ax.plot(x, [r["overall"] for r in rows], marker="s", label="shapes benchmark overall")
    ax.axhline(1 / 6, color="gray", lw=0.8, ls=":", label="shape chance (1/6)")
    phases = [r["phase"] for r in rows]
    for i in range(1, len(rows)):   # where the data changes (curriculum -> stage 2 -> stage 3)
        if phases[i] != phases[i - 1]:
            ax.axvline((x[i - 1] + x[i]) / 2, color="k", lw=0.6, ls="--")
    ax.set_xlabel("generation examples trained on (thousands)")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    out_png = out_png or os.path.join(workdir, CURVE_PNG)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png
