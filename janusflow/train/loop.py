"""The training run, top to bottom: workdir -> mesh -> data -> state (init, resume or warm
start) -> jitted step -> loop with logging, checkpoints and signals -> final model.

Resuming is automatic: the newest restorable checkpoint in the workdir is used (state, RNG and
data-iterator position), so a killed run restarted with the same command reproduces an
uninterrupted one exactly.

The loop does not wait for the devices each step: the next batches are placed on the devices
while a step runs (``train/prefetch.py``), and metrics -- with the step's finiteness flag,
decided on the device, where a non-finite step skips its update -- are fetched every
``log_every`` steps and before every checkpoint, so a non-finite step is still named exactly
and never checkpointed past.

The workdir may be local or a ``gs://`` URL (``janusflow/paths.py``); on a multi-host run every
process runs this same function: orbax coordinates the checkpoint writes, and only process 0
writes the JSON/metrics files.
"""

from __future__ import annotations

import contextlib
import signal
import time
from typing import Callable, Optional

import jax
import numpy as np

from janusflow import flops, paths, perf
from janusflow.checkpoint.manager import Checkpointer, check_workdir, meta_for
from janusflow.config import ExperimentConfig
from janusflow.parallel.mesh import make_mesh, maybe_initialize_distributed
from janusflow.parallel.rules import batch_sharding
from janusflow.train import metrics as metrics_lib
from janusflow.train.prefetch import DevicePrefetcher
from janusflow.train.state import (TrainState, make_init, merge_model, place_vae, random_vae_params,
                                   state_from_model, state_shardings)
from janusflow.train.step import check_finite_steps, jit_train_step
from janusflow.train.vae_source import check_vae_source, config_diff, initial_vae


class _Signals:
    """SIGTERM/SIGINT set a flag; the loop saves at the current step and exits cleanly."""

    def __init__(self):
        self.received: Optional[int] = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread (e.g. some test runners)
                pass
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def _closed_on_error(*closables):
    """Close (for the checkpointer: finish the saves already started, so the newest good
    checkpoint lands) before an error, e.g. a non-finite step, leaves the loop."""
    try:
        yield
    except BaseException:
        for c in closables:
            c.close()
        raise


def to_global(batch, mesh):
    """Host batch (this process's rows) -> global jax arrays sharded over (data, fsdp)."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
        batch_sharding(mesh, np.ndim(x)), np.asarray(x)), batch)


def init_distributed(**launch) -> bool:
    """``maybe_initialize_distributed(**launch)`` once per process: ``jax.distributed.initialize``
    raises when called twice, and one process may run several trainings (recipe phases).
    ``launch``: coordinator / num_processes / process_id from the command line."""
    if jax.distributed.is_initialized():  # reads a flag only: does not start the backend
        return True
    return maybe_initialize_distributed(**launch)


def _warm_start(cfg: ExperimentConfig, mesh, vae, log):
    """Initial state from ``train.init_from``: a previous stage's workdir (its final model) or a
    model checkpoint (native or official HF directory); local or a ``gs://`` URL. ``vae``:
    pretrained VAE parameters, or None for the random VAE a fresh start would build."""
    from janusflow.checkpoint.model_io import load_model
    path = cfg.train.init_from
    if paths.as_path(paths.join(path, "model")).is_dir():
        path = paths.join(path, "model")
    model, model_cfg = load_model(path, log=log)
    if model_cfg != cfg.model:
        raise ValueError(f"train.init_from={cfg.train.init_from!r} holds a model whose config differs "
                         f"from the experiment's in: {', '.join(config_diff(model_cfg, cfg.model))}")
    log(f"warm start from {path}")
    return state_from_model(model, random_vae_params(cfg) if vae is None else vae, cfg, mesh)


def save_final_model(cfg: ExperimentConfig, parts, state: TrainState, workdir: str, log):
    """``workdir/model`` (raw weights) and ``workdir/model_ema``: what the next stage, sampling
    and evaluation load.

    Called on every process: the arrays go to orbax as they are (sharded, possibly across
    hosts -- a ``device_get`` would fail on arrays that are not fully addressable); orbax
    writes each process's shards, ``save_model`` writes the config on process 0 only."""
    from janusflow.checkpoint.model_io import barrier, save_model
    primary = jax.process_index() == 0
    tok = run_tokenizer(cfg)
    for name, params in (("model", state.params), ("model_ema", state.ema)):
        if params is None:
            continue
        out = paths.join(workdir, name)
        if primary and paths.as_path(out).exists():
            # written by this run only: replaced by the newer final weights
            paths.as_path(out).rmtree()
        barrier(f"janusflow_final_{name}_cleared")  # no process sees the old directory
        save_model(out, merge_model(parts, params, state.frozen), cfg.model, tok)
        if primary:
            log(f"saved {out}")


def run_tokenizer(cfg: ExperimentConfig):
    """The tokenizer the run's data was encoded with (saved beside its models); None for
    synthetic-data runs, which have none."""
    if cfg.synthetic_data:
        return None
    from janusflow.data.pipeline import load_tokenizer
    return load_tokenizer(cfg.data, cfg.model)


_COMPILED: dict = {}


def _compiled_step(cfg, parts, shardings, mesh, batch):
    """One jitted step per (config, mesh, batch shapes) per process: repeated runs in one
    process (stages of the default run, tests) do not recompile."""
    key = (cfg, mesh.axis_names, tuple(d.id for d in mesh.devices.flat),
           str(jax.tree.map(lambda x: (x.shape, str(x.dtype)), batch)))
    if key not in _COMPILED:
        _COMPILED[key] = jit_train_step(cfg, parts, shardings, mesh, batch)
    return _COMPILED[key]


def train(cfg: ExperimentConfig, workdir: str, *, data_iter=None, log: Callable = print,
          stop_at: Optional[int] = None, devices=None) -> dict:
    """Run (or resume) training. ``data_iter``: an iterator of host batches with
    ``get_state()``/``set_state()``; default: built from ``cfg`` (see ``train/data.py``).
    ``stop_at``: stop after this global step; ``devices``: a subset of devices for the mesh
    (tests); default all. Returns the last metrics."""
    t = cfg.train
    # refusals that need no jax and touch no workdir first
    check_vae_source(cfg)
    if data_iter is None and not cfg.synthetic_data:
        from janusflow.data.pipeline import check_sources_named
        check_sources_named(cfg)
    init_distributed()  # before any other jax call: jax.distributed.initialize must come first
    check_workdir(workdir)
    mesh = make_mesh(t.mesh, devices=devices)
    parts, abstract, shardings = state_shardings(cfg, mesh)
    meta = meta_for(cfg, abstract)
    ckpt = Checkpointer(paths.join(workdir, "checkpoints"), keep=t.keep_checkpoints)
    ckpt.check_compatible(meta)
    if data_iter is None:
        from janusflow.train.data import make_data_iterator
        data_iter = make_data_iterator(cfg)

    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
    restored = ckpt.restore_latest(target, meta)
    if restored is not None:
        start, state, data_state = restored
        data_iter.set_state(data_state)
        log(f"resumed from step {start} in {workdir}")  # the VAE too comes from the checkpoint
    elif t.init_from:
        parts, state, shardings = _warm_start(cfg, mesh, initial_vae(cfg, log), log)
        start = 0
    else:
        vae = initial_vae(cfg, log)
        key = ("init", cfg, mesh.axis_names, tuple(d.id for d in mesh.devices.flat))
        if key not in _COMPILED:
            _COMPILED[key] = make_init(cfg, parts, shardings)
        with jax.set_mesh(mesh):
            state = _COMPILED[key](place_vae(vae, shardings))
        start = 0
        log(f"initialised a new {cfg.name} model (stage {t.stage})")

    end = t.steps if stop_at is None else min(stop_at, t.steps)
    # the next batches go to the devices while a step runs; read no batch past the last step
    batches = DevicePrefetcher(data_iter, lambda b: to_global(b, mesh), depth=2, limit=max(end - start, 1))
    first = batches.peek()
    step_fn = _compiled_step(cfg, parts, shardings, mesh, first)
    peak, peak_src = perf.peak_flops_per_device()
    step_flops = flops.train_step_flops(cfg, first)["total"]
    writer = metrics_lib.MetricsWriter(workdir, enabled=jax.process_index() == 0, log=log)
    writer.write_json("run_info.json", {"peak_flops_per_device": peak, "peak_source": peak_src,
                                        "devices": jax.device_count(), "model_flops_per_step": step_flops,
                                        "mesh": dict(mesh.shape)})
    progress = metrics_lib.Progress(start, end, log)
    last = {}
    # Metrics stay on the devices until a log or checkpoint step: fetching them is the only
    # host sync, so steps are dispatched back to back. A non-finite step skips its update on
    # the device; every pending step's flag is checked before anything is logged or saved.
    pending: list = []
    t_mark = time.perf_counter()
    with _Signals() as sig, _closed_on_error(ckpt, writer):
        for step in range(start, end):
            batch, data_after = next(batches)
            state, m = step_fn(state, batch)
            pending.append((step, m))
            done = step + 1
            stop = sig.received is not None
            log_now = done % t.log_every == 0 or done == end
            save_now = done % t.ckpt_every == 0 or done == end or stop
            if not (log_now or save_now):
                continue
            fetched = jax.device_get([mm for _, mm in pending])
            check_finite_steps([s for s, _ in pending], fetched)  # raises before a bad state is saved
            dt = (time.perf_counter() - t_mark) / len(pending)
            pending = []
            if log_now:
                last = metrics_lib.step_metrics(fetched[-1], dt, first, cfg, step_flops, peak * jax.device_count())
                if hasattr(data_iter, "metrics"):  # skipped / fixed bad examples, counted
                    last.update({f"data/{k}": v for k, v in data_iter.metrics().items()})
                writer.write(done, last)
                progress.update(done, last)
            if save_now:
                # the data position saved is that of the *next* batch to train on
                ckpt.save(done, state, data_after, meta, force=stop)
            if stop:
                ckpt.wait()
                log(f"received signal {sig.received}: saved step {done} and stopping")
                break
            t_mark = time.perf_counter()
    ckpt.wait()
    if int(jax.device_get(state.step)) >= t.steps:
        save_final_model(cfg, parts, state, workdir, log)
    ckpt.close()
    writer.close()
    return last
