"""The results file of a seeded sweep: one JSON line per finished member-seed run.

``janusflow sweep`` appends a record the moment a member-seed run ends, so the file (meant to
be committed, e.g. ``experiments/results/table6.jsonl``) holds every result even when the run
directories are gone and a study spans sessions. A record says which run it is (member, seed
index, the seeds it trained with, a sha256 of its resolved config) and what it measured: flat
``metrics`` (name -> number or null) from the recipe's evaluation and the last logged losses,
and its loss ``curves``. A run counts as finished when a record with its member, seed and
config fingerprint is in the file; a record of another config (the experiment changed since)
is neither skipped over nor tabulated.

Reading checks every field's type; a bad line is one message naming the file, line and field
and is left out, so one damaged line never loses the rest of a study.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import math
import os
from typing import Callable, Optional

from janusflow.configs.schema import RECIPE_PHASES, SIGLIP_PRETRAIN_FILE, VQ_PRETRAIN_FILE
from janusflow.records import Record, RecordError, iter_jsonl, read_json_object

FORMAT = "janusflow-sweep-run"
VERSION = 1
LOSSES = ("loss_ar", "loss_rf", "loss_repa", "loss_img")
MAX_CURVE_POINTS = 200      # per loss: enough for a learning curve, small enough to commit


def config_sha(cfg) -> str:
    """sha256 of a resolved experiment config (seeds and overrides applied)."""
    from janusflow.configs import io as config_io
    text = json.dumps(config_io.to_dict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------------------------- what one run measured
def _num(v) -> Optional[float]:
    """A finite JSON number (not a bool), else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _dict(v) -> dict:
    return v if isinstance(v, dict) else {}


def _per_t(res, key, prefix, out):
    res = _dict(res)
    ts, vals = res.get("t"), res.get(key)
    if isinstance(ts, list) and isinstance(vals, list) and len(ts) == len(vals):
        for t, v in zip(ts, vals):
            if _num(t) is not None:
                out[f"{prefix}.t={_num(t):g}"] = _num(v)


def eval_metrics(final: dict) -> dict:
    """Flat metrics of a recipe evaluation (``results.json["final"]``, train/recipe.py):

    - ``one_object.shape_right`` / ``colour_right`` / ``exactly_one``: the one-object diagnostic
      of the shapes benchmark (eval/shapes_bench.py::one_object_attributes);
    - ``bench.overall`` and ``bench.<tag>``: the shapes benchmark (GenEval rules);
    - ``cond_gap.t=T``: conditioning gap; ``val_rf.t=T``: validation RF loss with the right
      prompts at fixed t (the gap's "correct" term); ``shape_gap.t=T`` (eval/conditioning.py);
    - ``und.overall``, ``und.<qtype>``, ``und.no_image`` (best constant answers).
    Anything absent (a member without generation or understanding) is simply not there."""
    final = _dict(final)
    out = {}
    sb = _dict(final.get("shapes_bench"))
    if sb:
        oo = _dict(sb.get("one_object"))
        for key, name in (("shape_acc", "shape_right"), ("color_acc", "colour_right"),
                          ("one_component", "exactly_one")):
            if key in oo:
                out[f"one_object.{name}"] = _num(oo[key])
        out["bench.overall"] = _num(sb.get("overall"))
        for tag, v in _dict(sb.get("per_tag")).items():
            out[f"bench.{tag}"] = _num(v)
    _per_t(final.get("conditioning"), "gap", "cond_gap", out)
    _per_t(final.get("conditioning"), "correct", "val_rf", out)
    _per_t(final.get("shape_gap"), "gap", "shape_gap", out)
    und = _dict(final.get("understanding"))
    if und:
        out["und.overall"] = _num(und.get("overall"))
        for q, v in _dict(und.get("per_qtype")).items():
            out[f"und.{q}"] = _num(v)
        out["und.no_image"] = _num(_dict(und.get("baseline")).get("overall"))
    return out


def _metrics_files(run_dir):
    phased = [os.path.join(run_dir, p, "metrics.jsonl") for p in RECIPE_PHASES]
    phased = [p for p in phased if os.path.isfile(p)]
    if phased:
        return phased
    flat = os.path.join(run_dir, "metrics.jsonl")
    return [flat] if os.path.isfile(flat) else []


def _thin(xs, ys, limit=MAX_CURVE_POINTS):
    if len(xs) <= limit:
        return xs, ys
    idx = sorted({round(i * (len(xs) - 1) / (limit - 1)) for i in range(limit)})
    return [xs[i] for i in idx], [ys[i] for i in idx]


def run_losses(run_dir: str) -> tuple[dict, dict]:
    """(last logged value of each loss in the last phase, curves ``{loss: [steps, values]}`` with
    the phases' steps concatenated). A line cut by a kill is left out."""
    curves = {k: ([], []) for k in LOSSES}
    last, offset = {}, 0
    for path in _metrics_files(run_dir):
        rows = [rec.data for _, rec in iter_jsonl(path) if not isinstance(rec, RecordError)]
        rows = [r for r in rows if type(r.get("step")) is int]
        for r in rows:
            for k in LOSSES:
                v = _num(r.get(k))
                if v is not None and v != 0.0:   # 0.0: the term is off in this phase
                    curves[k][0].append(offset + r["step"])
                    curves[k][1].append(v)
        if rows:   # 0.0: the term is off in this run (no REPA in A, no AR in a gen-only run)
            last = {k: (v if v != 0.0 else None) for k in LOSSES for v in [_num(rows[-1].get(k))]}
            offset += rows[-1]["step"]
    return last, {k: [list(a) for a in _thin(*curves[k])] for k in LOSSES if curves[k][0]}


def code_commit() -> Optional[str]:
    """The git commit of the janusflow code that trained the run, when it is a git checkout."""
    import subprocess
    try:
        out = subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(__file__)), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def run_record(run_dir: str, *, spec: str, member: dict, seed: int, seeds: dict, overrides: list,
               sha: str, minutes: Optional[float]) -> dict:
    """The record of the finished run in ``run_dir``."""
    last, curves = run_losses(run_dir)
    metrics = {f"loss.{k[5:]}": v for k, v in last.items()}
    res_path = os.path.join(run_dir, "results.json")
    if os.path.isfile(res_path):
        res = read_json_object(res_path)
        metrics.update(eval_metrics(res.get("final")))
        # the run's own initial model, when it was evaluated too (recipe.eval_untrained)
        metrics.update({f"untrained.{k}": v for k, v in eval_metrics(res.get("untrained")).items()})
        minutes = _num(res.get("total_minutes")) or minutes
    return {"format": FORMAT, "version": VERSION, "spec": spec, "member": member["name"],
            "what": member.get("what", ""), "arg": member["arg"], "seed": seed, "seeds": seeds,
            "overrides": list(overrides), "config_sha": sha, "minutes": minutes,
            "commit": code_commit(), "finished": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "metrics": metrics, "curves": curves}


# ------------------------------------------------------------------------- the results file
def append_record(path: str, record: dict) -> None:
    """One line, flushed to disk before returning (a study killed a second later keeps it); an
    exclusive lock keeps two sweeps writing the same file from interleaving lines."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    line = json.dumps(record, sort_keys=True, allow_nan=False) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _check_record(rec: Record) -> dict:
    fmt = rec.get_str("format")
    if fmt != FORMAT:
        raise RecordError(f"{rec.where}: field 'format': expected {FORMAT!r}, got {fmt!r}")
    out = {"member": rec.get_str("member", nonempty=True), "seed": rec.get_int("seed", minimum=0),
           "config_sha": rec.get_str("config_sha", nonempty=True), "what": rec.get_str("what", ""),
           "spec": rec.get_str("spec", ""), "minutes": rec.get_float("minutes", None)}
    m = rec.get_obj("metrics")
    out["metrics"] = {k: m.get_float(k, None) for k in m.data}
    curves = rec.get_obj("curves", None)
    out["curves"] = {}
    for k in (curves.data if curves else {}):
        v = curves.data[k]
        ok = (isinstance(v, list) and len(v) == 2 and all(isinstance(a, list) for a in v)
              and len(v[0]) == len(v[1]) and all(_num(x) is not None for a in v for x in a))
        if not ok:
            raise curves.error(k, "[[steps], [values]] of equal length", v)
        out["curves"][k] = v
    return out


def read_records(path: str, log: Callable = print) -> list[dict]:
    """The valid records of ``path`` (none if it does not exist yet); each bad line is logged
    in one line and left out."""
    if not os.path.isfile(path):
        return []
    out = []
    for _, rec in iter_jsonl(path):
        try:
            if isinstance(rec, RecordError):
                raise rec
            out.append(_check_record(rec))
        except RecordError as e:
            log(f"{e} (line left out)")
    return out


def finished(records: list[dict], member: str, seed: int, sha: str) -> bool:
    return any(r["member"] == member and r["seed"] == seed and r["config_sha"] == sha for r in records)


# Names the recipe (train/recipe.py) and a single-stage run (train/loop.py) write into a workdir,
# and the sweep's own marker: only these are removed with a finished run's directory.
SWEEP_MARKER = "janusflow_sweep_run.json"
RUN_NAMES = frozenset(("init", SIGLIP_PRETRAIN_FILE, VQ_PRETRAIN_FILE, "eval_final", "eval_untrained", "results.json",
                       "learning_curves.png", "janusflow.lock", "janusflow_run.json", "janusflow_run.json.tmp",
                       "checkpoints", "model", "model_ema", "metrics.jsonl", "run_info.json", "tensorboard",
                       SWEEP_MARKER) + RECIPE_PHASES)


def claim_run_dir(run_dir: str, info: dict) -> Optional[str]:
    """Make ``run_dir`` for a sweep run and mark it as the sweep's (only then is it ever
    removed), or find it made by the sweep for the same config (``info["config_sha"]``: a
    half-finished run resumes, a finished one is recorded). Returns None, or why the directory
    is not this run's (then nothing in it is touched)."""
    marker = os.path.join(run_dir, SWEEP_MARKER)
    if os.path.isdir(run_dir):
        if not os.path.isfile(marker):
            return f"{run_dir} exists and was not made by janusflow sweep (no {SWEEP_MARKER}); move it away"
        try:
            sha = read_json_object(marker).get("config_sha")
        except RecordError as e:
            return str(e)
        if sha != info["config_sha"]:
            return (f"{run_dir} holds a run of another config (the experiment or --set changed); "
                    "move it away to train this one")
        return None
    os.makedirs(run_dir)
    with open(marker, "w") as fh:
        json.dump(info, fh)
    return None


def remove_run_dir(run_dir: str, log: Callable = print) -> None:
    """Remove a recorded run's directory: only one the sweep created (its marker), and in it
    only the names a run writes; anything else is left where it is, and said so."""
    import shutil
    if not os.path.isfile(os.path.join(run_dir, SWEEP_MARKER)):
        log(f"{run_dir}: not created by janusflow sweep (no {SWEEP_MARKER}); kept")
        return
    foreign = sorted(set(os.listdir(run_dir)) - RUN_NAMES)
    for name in sorted(set(os.listdir(run_dir)) & RUN_NAMES - {SWEEP_MARKER}):
        p = os.path.join(run_dir, name)
        shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.remove(p)
    if foreign:
        log(f"{run_dir}: kept {', '.join(foreign)} (not written by the run)")
        return
    os.remove(os.path.join(run_dir, SWEEP_MARKER))
    os.rmdir(run_dir)
