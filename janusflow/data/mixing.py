"""Mixing the und / gen / text streams into the train step's batch dict.

Every step carries a *fixed* number of examples of each task (so the jitted step never sees a
new shape and never recompiles); the task ratio und:gen:text is realised by those sizes.
:func:`task_batch_sizes` turns ratios into sizes by largest-remainder (Hamilton) rounding in
units of ``multiple_of`` (the number of batch shards times the accumulation steps, which every
per-task batch must be divisible by):

  quota_i = r_i / sum(r) * U  with U = global_batch / multiple_of units;
  each task gets floor(quota_i) units, the leftover units go to the largest fractional parts
  (ties: und before gen before text); a task with r_i > 0 that got 0 units then takes one unit
  from the largest task, so no requested stream silently disappears.

The realised share of each task is thus within ``multiple_of / global_batch`` of the requested
one (e.g. 14:80:6 at 512 -> 72:409:31 examples, shares 14.06/79.88/6.05 %), except when the
one-unit floor applies. Task identity is the sub-batch a row sits in (``und``/``gen``/``text``)
and each row's loss mask says which tokens it is trained on.
"""

from __future__ import annotations

import collections
import dataclasses
import math

import numpy as np

TASKS = ("und", "gen", "text")


def task_batch_sizes(ratios, global_batch: int, multiple_of: int = 1) -> dict:
    """{'und': n_u, 'gen': n_g, 'text': n_t} summing to ``global_batch`` (see module doc)."""
    r = [float(x) for x in ratios]
    if len(r) != 3 or any(x < 0 for x in r) or sum(r) <= 0:
        raise ValueError(f"ratios must be three non-negative numbers und:gen:text with a positive "
                         f"sum, got {tuple(ratios)}")
    if multiple_of < 1 or global_batch < 1 or global_batch % multiple_of:
        raise ValueError(f"global_batch {global_batch} must be a positive multiple of {multiple_of}")
    units = global_batch // multiple_of
    quota = [x / sum(r) * units for x in r]
    got = [int(np.floor(q)) for q in quota]
    order = sorted(range(3), key=lambda i: (-(quota[i] - got[i]), i))
    for i in order[:units - sum(got)]:
        got[i] += 1
    for i in range(3):
        if r[i] > 0 and got[i] == 0:
            j = max(range(3), key=lambda k: (got[k], -k))
            if got[j] <= 1:
                raise ValueError(f"global_batch {global_batch} (multiple_of {multiple_of}) is too "
                                 f"small to give each of the ratios {tuple(ratios)} an example")
            got[j] -= 1
            got[i] += 1
    return {t: g * multiple_of for t, g in zip(TASKS, got)}


def with_task_ratios(cfg, ratios, global_batch: int, multiple_of: int = 1):
    """``cfg`` (ExperimentConfig) with ``train.{und,gen,text}_batch`` set from the ratios, the one
    place both the step and the pipeline read the per-task sizes from."""
    sizes = task_batch_sizes(ratios, global_batch, multiple_of)
    train = dataclasses.replace(cfg.train, und_batch=sizes["und"], gen_batch=sizes["gen"],
                                text_batch=sizes["text"])
    return dataclasses.replace(cfg, train=train)


def task_batches_at(train, step: int) -> dict:
    """Global per-task batch sizes of step ``step`` under ``train.task_batch_schedule``
    (``((end_step, und, gen, text), ...)``: steps before ``end_step`` use that entry, the first
    that applies; steps past every entry use ``train.{und,gen,text}_batch``)."""
    for end, *sizes in getattr(train, "task_batch_schedule", ()):
        if step < end:
            return dict(zip(TASKS, sizes))
    return {"und": train.und_batch, "gen": train.gen_batch, "text": train.text_batch}


def batch_phases(train) -> list:
    """``[(first_step, end_step, sizes)]`` of the run: the schedule's entries, then the main
    sizes up to ``train.steps``. Each phase is one compiled step variant."""
    out, start = [], 0
    for end, *sizes in getattr(train, "task_batch_schedule", ()):
        if end > start:
            out.append((start, min(end, train.steps), dict(zip(TASKS, sizes))))
            start = end
    if start < train.steps:
        out.append((start, train.steps, task_batches_at(train, train.steps)))
    return out


def with_ratio_schedule(cfg, schedule, multiple_of: int = 1):
    """``cfg`` whose first steps use other task ratios: ``schedule`` is ``((end_step, ratios,
    global_batch), ...)`` (e.g. paper stage 2: ``((10_000, (30, 50, 20), 512),)``), each turned
    into per-task sizes as :func:`with_task_ratios` does. The step is compiled once per
    distinct size (no recompiling inside a phase); optimizer, warm-up and EMA run on across."""
    entries = tuple((int(end),) + tuple(task_batch_sizes(r, rows, multiple_of)[t] for t in TASKS)
                    for end, r, rows in schedule)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, task_batch_schedule=entries))


def base_stream(task: str) -> str:
    """The iterator key of the base data mixed into ``task`` (``data.base``)."""
    return f"{task}_base"


class MixedIterator:
    """Pulls fixed-size task batches from per-task example iterators (grain iterators yielding
    processed examples or ``{"_skip": reason}`` markers) and stacks them into the step's dict.

    ``stats`` counts examples, skips (``<task>/skipped_<reason>``) and fixes
    (``<task>/fixed_alpha`` ...); it is part of the checkpointable state, as is every task
    iterator's position, so a resumed run sees exactly the batches an uninterrupted one would.
    """

    STATE_VERSION = 1

    def __init__(self, iterators: dict, batch_sizes: dict, max_consecutive_skips: int = 10000,
                 base_share: float = 0.0):
        unknown = set(batch_sizes) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown tasks {sorted(unknown)}; expected {TASKS}")
        for t, n in batch_sizes.items():
            if n and t not in iterators:
                raise ValueError(f"batch size {n} for {t!r} but no {t} source is configured")
        self._its = iterators
        self.batch_sizes = {t: int(batch_sizes.get(t, 0)) for t in TASKS}
        self.max_consecutive_skips = max_consecutive_skips
        self.base_share = base_share
        self.stats = collections.Counter()
        self.steps = 0

    def __iter__(self):
        return self

    def _take(self, task: str, n: int) -> list:
        out, run = [], collections.Counter()
        while len(out) < n:
            ex = next(self._its[task])
            if "_skip" in ex:
                reason = ex["_skip"]
                self.stats[f"{task}/skipped_{reason}"] += 1
                run[reason] += 1
                if sum(run.values()) > self.max_consecutive_skips:
                    raise RuntimeError(f"{task} stream: {sum(run.values())} examples in a row were "
                                       f"skipped ({dict(run)}); check the source and its key mapping")
                continue
            run.clear()
            for flag in ex.pop("_flags", ()):
                self.stats[f"{task}/{flag}"] += 1
            out.append(ex)
        self.stats[f"{task}/examples"] += n
        return out

    def base_rows(self, n: int) -> int:
        """Rows of a task's ``n`` this step takes from its base stream: the running total is
        floor(steps x n x base_share), so the share over a run is exact even when it is not a
        whole number of rows per batch (1 row in 5 at n=1, share 0.2)."""
        total = lambda k: math.floor(k * n * self.base_share + 1e-9)  # noqa: E731
        return total(self.steps + 1) - total(self.steps)

    def __next__(self) -> dict:
        batch = {}
        for task in TASKS:
            n = self.batch_sizes[task]
            if n:
                nb = self.base_rows(n) if base_stream(task) in self._its else 0
                rows = self._take(task, n - nb) + (self._take(base_stream(task), nb) if nb else [])
                batch[task] = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        self.steps += 1
        return batch

    def set_batch_sizes(self, sizes: dict) -> None:
        """Per-task rows of the next batches (a ratio schedule's phase change; the streams'
        positions are unaffected, so a resumed run sees the same examples)."""
        for t, n in sizes.items():
            if n and t not in self._its:
                raise ValueError(f"batch size {n} for {t!r} but no {t} source is open")
        self.batch_sizes = {t: int(sizes.get(t, 0)) for t in TASKS}

    def close(self) -> None:
        """Stop worker processes / threads (``DataConfig.workers``); also on ``with`` exit."""
        for it in self._its.values():
            if hasattr(it, "close"):
                it.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def metrics(self, prefix: str = "data/") -> dict:
        return {f"{prefix}{k}": v for k, v in sorted(self.stats.items())}

    def get_state(self) -> dict:
        """JSON-serialisable position (save it with the model checkpoint)."""
        return {"version": self.STATE_VERSION, "steps": self.steps, "stats": dict(self.stats),
                "tasks": {t: it.get_state() for t, it in self._its.items()}}

    def set_state(self, state: dict) -> None:
        if state.get("version") != self.STATE_VERSION:
            raise ValueError(f"data iterator state version {state.get('version')!r}, expected "
                             f"{self.STATE_VERSION}")
        if set(state["tasks"]) != set(self._its):
            raise ValueError(f"data iterator state has tasks {sorted(state['tasks'])} but this "
                             f"pipeline has {sorted(self._its)}")
        for t, s in state["tasks"].items():
            self._its[t].set_state(s)
        self.stats = collections.Counter(state["stats"])
        self.steps = int(state["steps"])
