"""``janusflow sweep``: run the members of an experiment file's ``sweep()`` one after another
(or print their launch commands), then tabulate and plot them in ``<workdir>/results.md``.

An experiment file with a sweep defines ``sweep(arg) -> [{"name", "arg", "what"}, ...]``; member
``name`` trains with ``--config <file>:<arg>`` in ``<workdir>/<name>``. Each member runs in its
own process, so one failing member is reported and the sweep goes on, and a re-run of the same
command skips finished members and resumes the unfinished one from its checkpoints.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time

from janusflow import paths
from janusflow.configs.schema import RECIPE_PHASES as PHASES
from janusflow.configs.schema import ConfigError
from janusflow.configs.loader import load_python_file
from janusflow.records import RecordError, iter_jsonl

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
LOSSES = ("loss_ar", "loss_rf", "loss_repa")


def load_members(spec: str) -> tuple[str, list[dict]]:
    """``file.py[:arg]`` -> (file, members). Validates what the file returns."""
    path, _, arg = spec.partition(":")
    if not path.endswith(".py") or not os.path.isfile(path):
        raise ConfigError(f"--config {spec!r}: expected an existing experiments/<file>.py[:arg]")
    module = load_python_file(path)
    if not hasattr(module, "sweep"):
        raise ConfigError(f"{path} defines no sweep(arg); it is not a sweep file")
    members = module.sweep(arg or None)
    if not isinstance(members, (list, tuple)) or not members:
        raise ConfigError(f"{path}: sweep() must return a non-empty list of members")
    seen = set()
    for i, m in enumerate(members):
        if not isinstance(m, dict) or not isinstance(m.get("name"), str) or not isinstance(m.get("arg"), str):
            raise ConfigError(f"{path}: sweep()[{i}] must be a dict with str 'name' and 'arg', got {m!r}")
        try:   # a member name becomes <workdir>/<name>: '..' would train into the parent folder
            paths.plain_name(m["name"], f"{path}: sweep()[{i}] name")
        except paths.OutsideRoot as e:
            raise ConfigError(str(e)) from None
        if not _NAME.match(m["name"]) or m["name"] in seen:
            raise ConfigError(f"{path}: sweep()[{i}] name {m['name']!r} is not a unique, path-safe name")
        seen.add(m["name"])
    return path, list(members)


def select(members: list[dict], only: str | None) -> list[dict]:
    if not only:
        return members
    wanted = [w for w in only.split(",") if w]
    names = [m["name"] for m in members]
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise ConfigError(f"--only: unknown member(s) {unknown}; the sweep has {names}")
    by_name = {m["name"]: m for m in members}
    return [by_name[w] for w in dict.fromkeys(wanted)]   # in the order asked for


def train_argv(path: str, member: dict, workdir: str, overrides: list[str]) -> list[str]:
    argv = ["janusflow", "train", "--config", f"{path}:{member['arg']}",
            "--workdir", _join(workdir, member["name"])]
    for o in overrides:
        argv += ["--set", o]
    return argv


def _join(workdir, name):
    return workdir.rstrip("/") + "/" + name   # also right for gs:// workdirs


def launch_commands(path, members, workdir, overrides, launcher: str | None = None) -> list[str]:
    """One shell command per member: ``janusflow train ...`` or, with ``launcher`` (e.g.
    ``tpu_configs/launch_tpu.sh NAME ZONE PROJECT PLATFORM``), ``launcher SPEC WORKDIR [--set ...]``."""
    out = []
    for m in members:
        if launcher:
            argv = shlex.split(launcher) + [f"{path}:{m['arg']}", _join(workdir, m["name"])]
            for o in overrides:
                argv += ["--set", o]
        else:
            argv = train_argv(path, m, workdir, overrides)
        out.append(shlex.join(argv))
    return out


def is_done(member_dir: str) -> bool:
    """Finished: a recipe run wrote results.json; a single-stage run wrote its final model."""
    return os.path.isfile(os.path.join(member_dir, "results.json")) or os.path.isdir(
        os.path.join(member_dir, "model"))


def run(path, members, workdir, overrides, log=print) -> dict:
    """Train the members one after another; a second sweep on the same workdir is refused
    (each member's own workdir is held by its ``janusflow train``)."""
    from janusflow.train.workdir import WorkdirLock
    os.makedirs(workdir, exist_ok=True)
    with WorkdirLock(workdir, log):
        return _run(path, members, workdir, overrides, log)


def _run(path, members, workdir, overrides, log) -> dict:
    status = {}
    for i, m in enumerate(members, 1):
        mdir = _join(workdir, m["name"])
        if is_done(mdir):
            log(f"[{i}/{len(members)}] {m['name']}: done already, skipped")
            status[m["name"]] = "done"
            continue
        argv = train_argv(path, m, workdir, overrides)
        cmd = [sys.executable, "-c", "import sys; from janusflow.cli.main import main; sys.exit(main())"] + argv[1:]
        logfile = os.path.join(workdir, f"{m['name']}.log")
        log(f"[{i}/{len(members)}] {m['name']} ({m.get('what', '')}): {shlex.join(argv)}  (log: {logfile})")
        t0 = time.perf_counter()
        with open(logfile, "a") as f:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for line in proc.stdout:   # keep the member's own progress lines visible
                f.write(line)
                f.flush()
                if line.startswith(("step ", "== ", "shapes benchmark", "final EMA", "understanding")):
                    log(f"  {m['name']} | {line.rstrip()}")
            rc = proc.wait()
        minutes = (time.perf_counter() - t0) / 60
        status[m["name"]] = "done" if rc == 0 else f"failed (exit {rc}, see {logfile})"
        log(f"[{i}/{len(members)}] {m['name']}: {status[m['name']]} in {minutes:.1f} min")
    return status


# ---------------------------------------------------------------------------------- results
def _metrics_files(member_dir):
    phased = [os.path.join(member_dir, p, "metrics.jsonl") for p in PHASES]
    phased = [p for p in phased if os.path.isfile(p)]
    if phased:
        return phased
    flat = os.path.join(member_dir, "metrics.jsonl")
    return [flat] if os.path.isfile(flat) else []


def _read_jsonl(path):
    # A line cut by a kill (or otherwise not a JSON object) is dropped: the rest still counts.
    return [rec.data for _, rec in iter_jsonl(path) if not isinstance(rec, RecordError)]


def collect(members, workdir, status=None) -> list[dict]:
    """Per member: final losses (last logged values of the last phase), eval results, curves."""
    out = []
    for m in members:
        mdir = _join(workdir, m["name"])
        row = {"name": m["name"], "what": m.get("what", ""), "status": (status or {}).get(m["name"]),
               "curves": {k: ([], []) for k in LOSSES}, "final_losses": {}}
        offset = 0
        for path in _metrics_files(mdir):
            rows = [r for r in _read_jsonl(path) if type(r.get("step")) is int]
            for r in rows:
                for k in LOSSES:
                    if type(r.get(k)) in (int, float) and r[k] != 0.0:   # not bool
                        row["curves"][k][0].append(offset + r["step"])
                        row["curves"][k][1].append(r[k])
            if rows:
                row["final_losses"] = {k: rows[-1].get(k) for k in LOSSES}
                offset += rows[-1]["step"]
        res_path = os.path.join(mdir, "results.json")
        if os.path.isfile(res_path):
            with open(res_path) as f:
                res = json.load(f)
            final = res.get("final") if isinstance(res, dict) else None
            final = final if isinstance(final, dict) else {}
            row["shapes_bench"] = final.get("shapes_bench")
            row["understanding"] = final.get("understanding")
            row["conditioning"] = final.get("conditioning")
            row["minutes"] = res.get("total_minutes")
        if row["status"] is None:
            row["status"] = "done" if is_done(mdir) else ("partial" if row["final_losses"] else "not run")
        out.append(row)
    return out


def _fmt(v, nd=3):
    return "-" if v is None else f"{v:.{nd}f}"


def _cond_cell(c) -> str:
    """The conditioning gap at the smallest t, e.g. "+0.0007 (t=0.1)"."""
    if not c or not c.get("gap"):
        return "-"
    i = min(range(len(c["t"])), key=lambda k: c["t"][k])
    return f"{c['gap'][i]:+.4f} (t={c['t'][i]:g})"


def results_markdown(rows, title: str, command: str) -> str:
    tags = None
    for r in rows:
        if r.get("shapes_bench"):
            tags = list(r["shapes_bench"]["per_tag"])
            break
    tags = tags or ["single_object", "two_object", "counting", "colors", "position", "color_attr"]
    head = (["member", "ablates"] + tags + ["gen overall", "cond gap", "und acc"]
            + ["final " + k[5:] for k in LOSSES] + ["min", "status"])
    lines = [f"# {title}", "", f"Command: `{command}`", "",
             "Generation: shapes benchmark (GenEval rules, analytic detector) of the final EMA model; "
             "understanding: accuracy on held-out shapes questions; losses: last logged values of "
             "the last training phase; cond gap: RF loss with shuffled minus correct prompts at "
             "the smallest evaluated t (shapes/conditioning.py; ~0 = the generator ignores its prompt). "
             "'-' = not applicable or not run.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        sb, und = r.get("shapes_bench"), r.get("understanding")
        cells = [r["name"], r["what"]]
        cells += [_fmt(sb["per_tag"].get(t), 2) if sb else "-" for t in tags]
        cells += [_fmt(sb["overall"]) if sb else "-", _cond_cell(r.get("conditioning")),
                  _fmt(und["overall"]) if und else "-"]
        cells += [_fmt(r["final_losses"].get(k)) for k in LOSSES]
        cells += [_fmt(r.get("minutes"), 1), r["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    bases = sorted({round(r["understanding"]["baseline"]["overall"], 3) for r in rows
                    if (r.get("understanding") or {}).get("baseline")})
    if bases:   # the questions are the same for every member, so normally one value
        lines += ["", "Understanding without looking at the image (the best constant answer per question "
                  f"type, e.g. always \"1\" for counts): {', '.join(f'{b:.3f}' for b in bases)}; an und acc "
                  "at or below it means the image is not used."]
    lines += ["", "![learning curves](learning_curves.png)", ""]
    return "\n".join(lines)


def plot_curves(rows, out_png: str, smooth: int = 5):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for ax, k, title in zip(axes, LOSSES, ("AR (next-token)", "rectified flow (velocity MSE)", "REPA (-cos)")):
        for r in rows:
            x, y = r["curves"][k]
            if not x:
                continue
            y = np.asarray(y, float)
            if len(y) >= smooth:   # moving average: members differ by less than the step-to-step noise
                y = np.convolve(y, np.ones(smooth) / smooth, mode="valid")
                x = x[smooth - 1:]
            ax.plot(x, y, label=r["name"], lw=1.2)
        ax.set_title(title)
        ax.set_xlabel("step (phases concatenated)")
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)


def write_results(path, members, workdir, status=None, command="") -> str:
    rows = collect(members, workdir, status)
    md = results_markdown(rows, f"Sweep {os.path.basename(path)} in {workdir}", command)
    out = os.path.join(workdir, "results.md")
    with open(out, "w") as f:
        f.write(md)
    plot_curves(rows, os.path.join(workdir, "learning_curves.png"))
    return out
