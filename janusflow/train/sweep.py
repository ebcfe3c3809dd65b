"""``janusflow sweep``: run the members of an experiment file's ``sweep()`` for ``--seeds N``
seeds each (or print their launch commands), record each run in a results file and report
means, intervals and the paper's claims (sweep_results.py, sweep_report.py).

An experiment file with a sweep defines ``sweep(arg) -> [{"name", "arg", "what"}, ...]`` and
optionally ``claims(arg) -> [{"member", "metric", "direction", "claim"}, ...]`` (the paper's
directions, judged against the reference member F). Seed s of member ``name`` trains with
``--config <file>:<arg>`` in ``<workdir>/<name>/seed<s>``, with s added to the config's
``train.seed`` (initialisation, t and noise draws, and the evaluation's sampling noise) and
``data.seed`` (data order): seed 0 is the member's config as it stands, and seed s of every
member shares its draws, so differences are paired by seed. Runs go seed by seed (every member's
seed 0 first), each in its own process, so one failing run is reported and the sweep goes on.
The moment a run ends its record is appended to the results file and its directory removed
(``--keep-runs`` keeps it); a re-run of the same command skips the recorded runs and resumes
an unfinished one from its checkpoints.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
import time

from janusflow import paths
from janusflow.train import sweep_report
from janusflow.train import sweep_results
from janusflow.configs.schema import ConfigError
from janusflow.configs.loader import apply_overrides, load_config, load_python_file
from janusflow.records import RecordError

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


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


def load_claims(spec: str) -> list[dict]:
    """The experiment file's ``claims(arg)`` (none if it defines none), each checked."""
    path, _, arg = spec.partition(":")
    module = load_python_file(path)
    if not hasattr(module, "claims"):
        return []
    return [sweep_report.check_claim(c, i, path) for i, c in enumerate(module.claims(arg or None))]


@dataclasses.dataclass(frozen=True)
class Run:
    """One member at one seed: what it trains with and where."""
    member: dict
    seed: int
    overrides: tuple          # the user's --set, then this seed's train.seed / data.seed
    seeds: dict               # {"train": ..., "data": ...} as trained
    sha: str                  # sweep_results.config_sha of the resolved config

    @property
    def name(self) -> str:
        return f"{self.member['name']}/seed{self.seed}"


def plan_runs(path: str, members: list[dict], overrides: list[str], seeds: int) -> list[Run]:
    """Every member at seeds 0..seeds-1, seed by seed. Loads each member's config (so a bad
    member fails before hours of training start) to fold the seed into its own seeds."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    base = {m["name"]: apply_overrides(load_config(f"{path}:{m['arg']}"), overrides) for m in members}
    runs = []
    for s in range(seeds):
        for m in members:
            cfg = base[m["name"]]
            extra = (f"train.seed={cfg.train.seed + s}", f"data.seed={cfg.data.seed + s}")
            resolved = apply_overrides(cfg, list(extra))
            runs.append(Run(m, s, tuple(overrides) + extra,
                            {"train": resolved.train.seed, "data": resolved.data.seed},
                            sweep_results.config_sha(resolved)))
    return runs


def _join(workdir, name):
    return workdir.rstrip("/") + "/" + name   # also right for gs:// workdirs


def train_argv(path: str, run: Run, workdir: str) -> list[str]:
    argv = ["janusflow", "train", "--config", f"{path}:{run.member['arg']}", "--workdir", _join(workdir, run.name)]
    for o in run.overrides:
        argv += ["--set", o]
    return argv


def launch_commands(path, runs: list[Run], workdir, launcher: str | None = None) -> list[str]:
    """One shell command per run: ``janusflow train ...`` or, with ``launcher`` (e.g.
    ``tpu_configs/launch_tpu.sh NAME ZONE PROJECT PLATFORM``), ``launcher SPEC WORKDIR [--set ...]``."""
    out = []
    for r in runs:
        if launcher:
            argv = shlex.split(launcher) + [f"{path}:{r.member['arg']}", _join(workdir, r.name)]
            for o in r.overrides:
                argv += ["--set", o]
        else:
            argv = train_argv(path, r, workdir)
        out.append(shlex.join(argv))
    return out


def is_done(run_dir: str) -> bool:
    """Finished: a recipe run wrote results.json; a single-stage run wrote its final model."""
    return os.path.isfile(os.path.join(run_dir, "results.json")) or os.path.isdir(os.path.join(run_dir, "model"))


def run(path, runs: list[Run], workdir, results_path, *, keep_runs=False, log=print) -> dict:
    """Train the runs one after another, recording each in ``results_path``; a second sweep on
    the same workdir is refused (each run's own workdir is held by its ``janusflow train``)."""
    from janusflow.train.workdir import WorkdirLock
    os.makedirs(workdir, exist_ok=True)
    with WorkdirLock(workdir, log):
        return _run(path, runs, workdir, results_path, keep_runs, log)


def _run(path, runs, workdir, results_path, keep_runs, log) -> dict:
    status = {}
    recorded = sweep_results.read_records(results_path, log)
    for i, r in enumerate(runs, 1):
        where = f"[{i}/{len(runs)}] {r.name}"
        if sweep_results.finished(recorded, r.member["name"], r.seed, r.sha):
            log(f"{where}: recorded in {results_path} already, skipped")
            status[r.name] = "done"
            continue
        rdir = _join(workdir, r.name)
        minutes = None
        problem = sweep_results.claim_run_dir(rdir, {"spec": path, "member": r.member["name"], "seed": r.seed,
                                                     "config_sha": r.sha})
        if problem:   # another config's run, or not the sweep's: nothing there is touched
            status[r.name] = f"refused ({problem})"
            log(f"{where}: {status[r.name]}")
            continue
        if is_done(rdir):
            log(f"{where}: finished in {rdir} but not recorded; recording it")
        else:
            minutes, rc = _train(path, r, workdir, where, log)
            if rc != 0:
                status[r.name] = f"failed (exit {rc}, see {_logfile(workdir, r)})"
                log(f"{where}: {status[r.name]} in {minutes:.1f} min")
                continue
        try:
            rec = sweep_results.run_record(rdir, spec=path, member=r.member, seed=r.seed, seeds=r.seeds,
                                           overrides=list(r.overrides), sha=r.sha, minutes=minutes)
        except RecordError as e:   # e.g. a results.json damaged by hand: this run only
            status[r.name] = f"not recorded ({e})"
            log(f"{where}: {status[r.name]}")
            continue
        sweep_results.append_record(results_path, rec)
        recorded.append({"member": r.member["name"], "seed": r.seed, "config_sha": r.sha})
        status[r.name] = "done"
        log(f"{where}: done{'' if minutes is None else f' in {minutes:.1f} min'}, recorded in {results_path}")
        if not keep_runs:
            sweep_results.remove_run_dir(rdir, log)
            parent = os.path.dirname(rdir)   # <workdir>/<member>, made for its seed directories
            if os.path.isdir(parent) and not os.listdir(parent):
                os.rmdir(parent)
    return status


def _logfile(workdir, r: Run) -> str:
    return os.path.join(workdir, f"{r.member['name']}.seed{r.seed}.log")


def _train(path, r: Run, workdir, where, log) -> tuple[float, int]:
    argv = train_argv(path, r, workdir)
    cmd = [sys.executable, "-c", "import sys; from janusflow.cli.main import main; sys.exit(main())"] + argv[1:]
    logfile = _logfile(workdir, r)
    log(f"{where} ({r.member.get('what', '')}): {shlex.join(argv)}  (log: {logfile})")
    t0 = time.perf_counter()
    with open(logfile, "a") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:   # keep the run's own progress lines visible
            f.write(line)
            f.flush()
            if line.startswith(("step ", "== ", "shapes benchmark", "final EMA", "understanding")):
                log(f"  {r.name} | {line.rstrip()}")
        rc = proc.wait()
    return (time.perf_counter() - t0) / 60, rc


def report(path: str, members: list[dict], runs: list[Run], results_path: str, *, command: str = "",
           reference: str = "F", claims: list | None = None, log=print) -> dict:
    """The report (sweep_report.py) of the records of ``results_path`` that belong to ``runs``
    (same member, seed and config); records of other configs are counted and left out."""
    wanted = {(r.member["name"], r.seed): r.sha for r in runs}
    records = sweep_results.read_records(results_path, log)
    keep = [x for x in records if wanted.get((x["member"], x["seed"])) == x["config_sha"]]
    stale = sum(1 for x in records if (x["member"], x["seed"]) in wanted
                and wanted[(x["member"], x["seed"])] != x["config_sha"])
    return sweep_report.write_report(keep, members, results_path, title=f"Sweep {os.path.basename(path)}",
                                     command=command, reference=reference, claims=claims, left_out=stale)
