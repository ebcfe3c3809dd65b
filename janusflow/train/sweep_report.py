"""The report of a seeded sweep, from its results file (sweep_results.py): per member the mean
and 95% t-interval over seeds of each metric, the paired difference from the reference
member (F) with its interval, the verdict on each of the paper's claims the experiment file
lists (``claims(arg)``), as markdown + JSON, a plot of the members with error bars and the
learning curves of every run; all beside the results file (:func:`report_paths`)."""

from __future__ import annotations

import json
import os
from typing import Optional

from janusflow.train import sweep_stats
from janusflow.train.sweep_results import LOSSES

# (metric, column label, decimals). Generation first, then understanding; the JSON summary has
# every metric of the records (all t of the gaps, every benchmark tag, the final losses).
GEN_COLUMNS = (("one_object.shape_right", "shape right", 3), ("one_object.colour_right", "colour right", 3),
               ("one_object.exactly_one", "one object", 3), ("bench.overall", "benchmark", 3),
               ("cond_gap.t=0.1", "cond gap t=0.1", 4), ("shape_gap.t=0.1", "shape gap t=0.1", 4),
               ("val_rf.t=0.5", "val RF loss t=0.5", 4))
UND_COLUMNS = (("und.overall", "und overall", 3), ("und.color", "colour", 3), ("und.count", "count", 3),
               ("und.shape", "shape", 3), ("und.position", "position", 3))
COLUMNS = GEN_COLUMNS + UND_COLUMNS
LOSS_COLUMNS = (("loss.ar", "AR", 3), ("loss.rf", "RF", 3), ("loss.repa", "REPA", 3))
INTERVAL = ("95% Student-t interval over seeds: mean +- t(0.975, n-1) * sd / sqrt(n), sd with n-1; "
            "differences are paired by seed (member seed s - reference seed s)")


def check_claim(c, i: int, path: str) -> dict:
    """A claim of the experiment file: ``{"member", "metric", "direction": +1|-1, "claim"}``."""
    from janusflow.configs.schema import ConfigError
    ok = (isinstance(c, dict) and isinstance(c.get("member"), str) and isinstance(c.get("metric"), str)
          and c.get("direction") in (1, -1) and not isinstance(c.get("direction"), bool)
          and isinstance(c.get("claim", ""), str))
    if not ok:
        raise ConfigError(f"{path}: claims()[{i}] must be {{'member': str, 'metric': str, 'direction': 1 or -1, "
                          f"'claim': str}}, got {c!r}")
    return c


UNTRAINED = "untrained"


def _untrained_runs(by: dict, reference: str) -> dict:
    """Seed -> a pseudo-record of the untrained model's metrics (``untrained.*``, recorded when
    the runs evaluated their initial model): the reference member's own, else any member's."""
    out = {}
    for name in [reference] + sorted(set(by) - {reference}):
        for seed, r in by.get(name, {}).items():
            m = {k[len(UNTRAINED) + 1:]: v for k, v in r["metrics"].items() if k.startswith(UNTRAINED + ".")}
            if m and seed not in out:
                out[seed] = {"metrics": m, "minutes": None}
    return out


def summarize(records: list[dict], members: list[dict], reference: str = "F",
              claims: Optional[list] = None) -> dict:
    """Statistics of ``records`` (already filtered to the current configs) for ``members`` in
    their sweep order. A seed recorded twice counts once (its last record). When the runs also
    evaluated their initial model, an extra row ``untrained`` holds it (how far training got)."""
    by = {}
    for r in records:
        by.setdefault(r["member"], {})[r["seed"]] = r
    untrained = _untrained_runs(by, reference)
    if untrained and UNTRAINED not in by:
        by[UNTRAINED] = untrained
        members = list(members) + [{"name": UNTRAINED, "what": "the initial model of the same seed"}]
    out = {"interval": INTERVAL, "reference": reference, "members": {}, "differences": {}, "verdicts": []}
    values = {}
    for m in members:
        runs = by.get(m["name"], {})
        keys = sorted({k for r in runs.values() for k in r["metrics"] if not k.startswith(UNTRAINED + ".")})
        values[m["name"]] = {k: {s: r["metrics"][k] for s, r in runs.items() if r["metrics"].get(k) is not None}
                             for k in keys}
        minutes = [r["minutes"] for r in runs.values() if r["minutes"] is not None]
        out["members"][m["name"]] = {
            "what": m.get("what", ""), "seeds": sorted(runs),
            "minutes": sweep_stats.mean_interval(minutes)["mean"] if minutes else None,
            "metrics": {k: sweep_stats.mean_interval(list(v.values())) | {"values": [v[s] for s in sorted(v)]}
                        for k, v in values[m["name"]].items() if v}}
    ref = values.get(reference, {})
    for m in members:
        if m["name"] == reference:
            continue
        diffs = {k: sweep_stats.paired_difference(v, ref[k]) for k, v in values[m["name"]].items() if k in ref}
        out["differences"][m["name"]] = {k: d for k, d in diffs.items() if d is not None}
    names = {m["name"] for m in members}
    for c in claims or []:
        if c["member"] not in names:   # not in this sweep (--only): nothing to judge
            continue
        d = out["differences"].get(c["member"], {}).get(c["metric"])
        word, why = sweep_stats.verdict(d, c["direction"])
        out["verdicts"].append({**c, "verdict": word, "detail": why, "difference": d})
    return out


def _cell(st, nd):
    if st is None:
        return "-"
    if st["half"] is None:
        return f"{st['mean']:.{nd}f} (n=1)"
    return f"{st['mean']:.{nd}f} ± {st['half']:.{nd}f}"


def _diff_cell(d, nd):
    if d is None:
        return "-"
    if d["half"] is None:
        return f"{d['mean']:+.{nd}f} (1 pair)"
    return f"{d['mean']:+.{nd}f} [{d['lo']:+.{nd}f}, {d['hi']:+.{nd}f}]"


def _table(head, rows):
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def verdict_line(v: dict, reference: str) -> str:
    side = "above" if v["direction"] > 0 else "below"
    return (f"- {v['member']} vs {reference}, {v['metric']} (paper: {v['member']} {side} {reference}"
            f"{'; ' + v['claim'] if v.get('claim') else ''}): **{v['verdict']}** -- {v['detail']}")


def markdown(summary: dict, title: str, command: str, left_out: int = 0,
             images: tuple = ("members.png", "learning_curves.png")) -> str:
    ref = summary["reference"]
    members = summary["members"]
    lines = [f"# {title}", "", f"Command: `{command}`", "",
             f"Each cell: mean ± half-width of the {INTERVAL}. (n=1): one seed, no interval. "
             "Generation: the one-object diagnostic (largest object's shape right, colour right, exactly one "
             "object, on the one-object prompts), the shapes benchmark (GenEval rules), the conditioning and "
             "shape gaps (RF loss with a wrong prompt minus the right one) and the validation RF loss at a "
             "fixed t. Understanding: exact-match accuracy per question type on held-out scenes.", ""]
    if left_out:
        lines += [f"{left_out} record(s) of another config (the experiment changed since) are left out.", ""]
    for name, cols in (("Generation", GEN_COLUMNS), ("Understanding", UND_COLUMNS),
                       ("Training losses (last logged value of the last phase)", LOSS_COLUMNS)):
        head = ["member", "ablates", "seeds"] + [c[1] for c in cols]
        rows = [[m, s["what"], str(len(s["seeds"]))] + [_cell(s["metrics"].get(k), nd) for k, _, nd in cols]
                for m, s in members.items()]
        lines += [f"## {name}", ""] + _table(head, rows) + [""]
    bases = sorted({round(s["metrics"]["und.no_image"]["mean"], 3) for s in members.values()
                    if "und.no_image" in s["metrics"]})
    if bases:
        lines += ["Understanding without looking at the image (best constant answer per question type): "
                  + ", ".join(f"{b:.3f}" for b in bases) + ".", ""]
    head = ["member"] + [c[1] for c in COLUMNS]
    rows = [[m] + [_diff_cell(d.get(k), nd) for k, _, nd in COLUMNS] for m, d in summary["differences"].items()]
    lines += [f"## Difference from {ref} (paired by seed: mean [95% interval])", ""] + _table(head, rows) + [""]
    if summary["verdicts"]:
        lines += ["## The paper's claims (Table 6)", ""] + [verdict_line(v, ref) for v in summary["verdicts"]] + [""]
    lines += [f"![members]({images[0]})", "", f"![learning curves]({images[1]})", ""]
    return "\n".join(lines)


def plot_members(summary: dict, out_png: str):
    """One panel per table metric: each member's mean with its 95% interval, and its seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(summary["members"])
    ncol = 4
    nrow = -(-len(COLUMNS) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 3 * nrow), squeeze=False)
    for ax, (key, label, _) in zip(axes.flat, COLUMNS):
        for i, name in enumerate(names):
            st = summary["members"][name]["metrics"].get(key)
            if st is None:
                continue
            ax.scatter([i] * len(st["values"]), st["values"], s=10, color="0.6", zorder=1)
            err = None if st["half"] is None else [[st["half"]], [st["half"]]]
            ax.errorbar([i], [st["mean"]], yerr=err, fmt="o", color="C0", capsize=4, zorder=2)
        ax.set_title(label if not key.startswith("und.") or key == "und.overall" else f"und {label}", fontsize=9)
        ax.set_xticks(range(len(names)), names, fontsize=7, rotation=45)
    for ax in list(axes.flat)[len(COLUMNS):]:
        ax.axis("off")
    fig.suptitle("mean and 95% t-interval over seeds (grey: each seed)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)


def plot_curves(records: list[dict], out_png: str, smooth: int = 5):
    """Every run's loss curves, one colour per member (moving average over ``smooth`` logs)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    colour = {}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for ax, k, title in zip(axes, LOSSES, ("AR (next-token)", "rectified flow (velocity MSE)", "REPA (-cos)")):
        for r in records:
            if k not in r["curves"]:
                continue
            x, y = r["curves"][k]
            y = np.asarray(y, float)
            if len(y) >= smooth:   # members differ by less than the step-to-step noise
                y = np.convolve(y, np.ones(smooth) / smooth, mode="valid")
                x = x[smooth - 1:]
            c = colour.setdefault(r["member"], f"C{len(colour) % 10}")
            first = not any(line.get_label() == r["member"] for line in ax.get_lines())
            ax.plot(x, y, color=c, lw=1.0, label=r["member"] if first else "_")
        ax.set_title(title)
        ax.set_xlabel("step (phases concatenated)")
        if ax.get_lines():
            ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)


def report_paths(results_path: str) -> dict:
    """The report's files beside the results file ``X.jsonl``: ``X.md``, ``X_summary.json``,
    ``X_members.png``, ``X_curves.png`` (names derived from it, so nothing else is overwritten)."""
    stem = results_path[:-len(".jsonl")] if results_path.endswith(".jsonl") else results_path
    return {"md": stem + ".md", "json": stem + "_summary.json", "members": stem + "_members.png",
            "curves": stem + "_curves.png"}


def write_report(records: list[dict], members: list[dict], results_path: str, *, title: str, command: str,
                 reference: str = "F", claims: Optional[list] = None, left_out: int = 0) -> dict:
    """The markdown table, JSON summary and the two plots (:func:`report_paths`)."""
    out = report_paths(results_path)
    summary = summarize(records, members, reference, claims)
    with open(out["md"], "w") as fh:
        fh.write(markdown(summary, title, command, left_out,
                          images=(os.path.basename(out["members"]), os.path.basename(out["curves"]))))
    with open(out["json"], "w") as fh:
        json.dump(summary, fh, indent=1)
    plot_members(summary, out["members"])
    plot_curves(records, out["curves"])
    return summary
