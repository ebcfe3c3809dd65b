"""The training run, top to bottom: workdir -> mesh -> data -> state (init, resume or warm
start) -> jitted step -> loop with logging, checkpoints and signals -> final model.

Resuming is automatic: the newest restorable checkpoint in the workdir is used (state, RNG and
data-iterator position), so a killed run restarted with the same command reproduces an
uninterrupted one exactly. When checkpoints exist but none restores, the run stops unless
``start_over`` (then they are moved aside, not deleted).

One run at a time per workdir, and the run replaces only what it wrote (``train/workdir.py``).

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

import datetime
import signal
import time
from typing import Callable, Optional

import jax
import numpy as np

from janusflow import paths
from janusflow.perf import flops
from janusflow.perf import peak as perf
from janusflow.checkpoint.manager import (Checkpointer, UnrestorableCheckpointsError, check_workdir,
                                          meta_for)
from janusflow.configs.schema import ExperimentConfig
from janusflow.data.latents import check_codes_tokenizer
from janusflow.data.mixing import batch_phases, task_batches_at
from janusflow.data.pipeline import per_process_batch_sizes
from janusflow.parallel.mesh import make_mesh, maybe_initialize_distributed
from janusflow.parallel.rules import batch_sharding
from janusflow.perf.platforms import fit_batches_to_mesh
from janusflow.train import metrics as metrics_lib
from janusflow.train import workdir as workdir_lib
from janusflow.train.prefetch import DevicePrefetcher
from janusflow.train.state import (TrainState, make_init, merge_model, merge_vae, place_vae, random_vae_params,
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
    # loaded in the experiment's parameter dtype: a float32 checkpoint fine-tunes in bfloat16
    # with model.param_dtype=bfloat16 (and back)
    # and in the experiment's layer layout: a scanned checkpoint fine-tunes unrolled (LoRA) and back
    model, model_cfg = load_model(path, dtype=cfg.model.param_dtype, scan_layers=cfg.model.scan_layers, log=log)
    if model_cfg != cfg.model:
        raise ValueError(f"train.init_from={cfg.train.init_from!r} holds a model whose config differs "
                         f"from the experiment's in: {', '.join(config_diff(model_cfg, cfg.model))}")
    log(f"warm start from {path}")
    return state_from_model(model, random_vae_params(cfg) if vae is None else vae, cfg, mesh)


def final_model_names(cfg: ExperimentConfig) -> tuple:
    """The folders :func:`save_final_model` writes (and replaces)."""
    return ("model",) + (("model_ema",) if cfg.train.optim.ema_decay > 0 else ())


def save_final_model(cfg: ExperimentConfig, parts, state: TrainState, workdir: str, log,
                     manifest: workdir_lib.Manifest | None):
    """``workdir/model`` (raw weights) and ``workdir/model_ema``: what the next stage, sampling
    and evaluation load. An existing folder is replaced only when the manifest says the run
    wrote everything in it.

    Called on every process: the arrays go to orbax as they are (sharded, possibly across
    hosts -- a ``device_get`` would fail on arrays that are not fully addressable); orbax
    writes each process's shards, ``save_model`` writes the config on process 0 only
    (``manifest``: process 0's, None on the others)."""
    from janusflow.checkpoint.model_io import CONFIG_NAME, PARAMS_DIR, barrier, save_model
    primary = jax.process_index() == 0
    tok = run_tokenizer(cfg)
    creates = (PARAMS_DIR, CONFIG_NAME, CONFIG_NAME + ".tmp", *(tok.files() if tok is not None else ()))
    for name, params in (("model", state.params), ("model_ema", state.ema)):
        if params is None:
            continue
        out = paths.join(workdir, name)
        error = None
        if primary:
            try:
                manifest.replace(name, creates)
            except workdir_lib.WorkdirOwnershipError as e:
                error = e
        workdir_lib.on_every_process(error, f"{out} not replaced")
        barrier(f"janusflow_final_{name}_cleared")  # no process sees the old directory
        save_model(out, merge_model(parts, params, state.frozen), cfg.model, tok)
        if primary:
            manifest.record(name)
            log(f"saved {out}")


def run_tokenizer(cfg: ExperimentConfig):
    """The tokenizer the run's data was encoded with (saved beside its models); None for
    synthetic-data runs, which have none."""
    if cfg.synthetic_data:
        return None
    from janusflow.data.pipeline import load_tokenizer
    return load_tokenizer(cfg.data, cfg.model)


def batch_rows(batch) -> dict:
    """Rows per task sub-batch (what tells one compiled step variant from another)."""
    return {task: next(iter(b.values())).shape[0] for task, b in batch.items()}


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
          stop_at: Optional[int] = None, devices=None, start_over: bool = False,
          probe: Optional[tuple] = None) -> dict:
    """Run (or resume) training. ``data_iter``: an iterator of host batches with
    ``get_state()``/``set_state()``; default: built from ``cfg`` (see ``train/data.py``).
    ``stop_at``: stop after this global step; ``devices``: a subset of devices for the mesh
    (tests); default all. ``start_over``: when no checkpoint of the workdir restores, move them
    aside and train from step 0 (default: refuse). ``probe``: ``(every, fn)``, ``fn(step, model,
    vae)`` called with the EMA model (the raw one without EMA) every ``every`` steps, e.g. a
    learning curve (single-process runs). Returns the last metrics."""
    # refusals that need no jax and touch no workdir first
    check_vae_source(cfg)
    if data_iter is None and not cfg.synthetic_data:
        from janusflow.data.check import check_or_refuse
        from janusflow.data.pipeline import check_sources_named
        check_sources_named(cfg)
        check_or_refuse(cfg, log=log)
    init_distributed()  # before any other jax call: jax.distributed.initialize must come first
    check_workdir(workdir)
    with workdir_lib.hold(workdir, jax.process_index() == 0, replaces=final_model_names(cfg), log=log) as manifest:
        return _train(cfg, workdir, manifest, data_iter=data_iter, log=log, stop_at=stop_at, devices=devices,
                      start_over=start_over, probe=probe)


def _restore_or_start_over(ckpt: Checkpointer, target, meta, workdir: str, keep: int, start_over: bool, log):
    """(checkpointer, restored or None). All checkpoints unrestorable + ``start_over``: the
    checkpoints folder is renamed (kept for inspection) and a fresh one is used."""
    from janusflow.checkpoint.model_io import barrier
    try:
        return ckpt, ckpt.restore_latest(target, meta)
    except UnrestorableCheckpointsError as e:
        if not start_over:
            raise
        ckpt.close()
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
        aside = paths.join(workdir, f"checkpoints.unrestorable-{stamp}")
        if jax.process_index() == 0:
            paths.as_path(ckpt.directory).rename(paths.as_path(aside))
        barrier("janusflow_checkpoints_moved_aside")
        log(f"{e}\nstarting over (start_over): moved them to {aside}")
        return Checkpointer(paths.join(workdir, "checkpoints"), keep=keep), None


def _on_host(tree):
    """Host numpy copies of (possibly sharded) arrays; across processes, gathered."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(tree, tiled=True)


def _train(cfg: ExperimentConfig, workdir: str, manifest, *, data_iter, log, stop_at, devices, start_over,
           probe=None):
    t = cfg.train
    mesh = make_mesh(t.mesh, devices=devices)
    # task batches that do not divide over the mesh: re-rounded as --platform does, said once
    cfg = fit_batches_to_mesh(cfg, mesh.shape["data"] * mesh.shape["fsdp"], log=log)
    t = cfg.train
    parts, abstract, shardings = state_shardings(cfg, mesh)
    meta = meta_for(cfg, abstract)
    ckpt = Checkpointer(paths.join(workdir, "checkpoints"), keep=t.keep_checkpoints)
    ckpt.check_compatible(meta)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
    ckpt, restored = _restore_or_start_over(ckpt, target, meta, workdir, t.keep_checkpoints, start_over, log)
    if data_iter is None:
        from janusflow.train.data import make_data_iterator
        data_iter = make_data_iterator(cfg)
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

    if cfg.model.generates_image_tokens and cfg.data.gen.latents and t.gen_batch and not cfg.synthetic_data:
        check_codes_tokenizer(cfg.data.gen, cfg.model, _on_host(state.frozen["gen_vision"]))
    end = t.steps if stop_at is None else min(stop_at, t.steps)
    # The ratio schedule's phases (train.task_batch_schedule): one compiled step per phase,
    # all on the same state, so AdamW moments, the warm-up position and the EMA run on. The
    # pipeline's rows switch before it reads the first batch of a new phase (batches are read
    # ahead of the step that trains on them).
    set_sizes = getattr(data_iter, "set_batch_sizes", None)
    phase_sizes = lambda s: per_process_batch_sizes(cfg, jax.process_count(), s)  # noqa: E731
    if set_sizes is None and len(batch_phases(t)) > 1:
        raise ValueError("train.task_batch_schedule needs a data iterator with set_batch_sizes()")
    current = {}

    def before_read(i):  # i-th batch read from here on trains step start + i
        if set_sizes is not None and phase_sizes(start + i) != current.get("sizes"):
            current["sizes"] = phase_sizes(start + i)
            set_sizes(current["sizes"])

    # the next batches go to the devices while a step runs; read no batch past the last step
    batches = DevicePrefetcher(data_iter, lambda b: to_global(b, mesh), depth=2, limit=max(end - start, 1),
                               before_read=before_read)
    first = batches.peek()
    step_fn = _compiled_step(cfg, parts, shardings, mesh, first)
    # MFU against the compute dtype's peak, with every dtype's beside (bf16 is several times
    # faster than fp32 on some CPUs, so one number would flatter or shame one of them)
    peaks = perf.peaks_per_device()
    peak, peak_src = peaks[cfg.model.dtype]
    peaks_total = {d: p * jax.device_count() for d, (p, _) in peaks.items()}
    step_flops = flops.train_step_flops(cfg, first)["total"]
    writer = metrics_lib.MetricsWriter(workdir, enabled=jax.process_index() == 0, log=log)
    writer.write_json("run_info.json", {"peak_flops_per_device": peak, "peak_source": peak_src,
                                        "peaks_per_device": {d: p for d, (p, _) in peaks.items()},
                                        "devices": jax.device_count(), "model_flops_per_step": step_flops,
                                        "mesh": dict(mesh.shape)})
    progress = metrics_lib.Progress(start, end, log)
    sampler = _sampler(cfg, workdir, writer, mesh)
    if sampler is not None and start == 0:  # the starting point, to compare the later grids with
        sampler(0, merge_model(parts, state.params, state.frozen), merge_vae(parts, state.vae))
    last = {}
    # Metrics stay on the devices until a log or checkpoint step: fetching them is the only
    # host sync, so steps are dispatched back to back. A non-finite step skips its update on
    # the device; every pending step's flag is checked before anything is logged or saved.
    pending: list = []
    t_mark = time.perf_counter()
    try:
        with _Signals() as sig:
            for step in range(start, end):
                batch, data_after = next(batches)
                if batch_rows(batch) != batch_rows(first):  # a new phase: its own compiled step
                    first = batch
                    step_fn = _compiled_step(cfg, parts, shardings, mesh, first)
                    step_flops = flops.train_step_flops(cfg, first)["total"]
                    log(f"step {step}: task batches und:gen:text now "
                        + ":".join(str(n) for n in task_batches_at(t, step).values()))
                state, m = step_fn(state, batch)
                pending.append((step, m))
                done = step + 1
                if sampler is not None and sampler.due(done):
                    sampler(done, merge_model(parts, state.params, state.frozen), merge_vae(parts, state.vae))
                if probe is not None and done % probe[0] == 0:
                    params = state.ema if state.ema is not None else state.params
                    probe[1](done, merge_model(parts, params, state.frozen), merge_vae(parts, state.vae))
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
                    last = metrics_lib.step_metrics(fetched[-1], dt, first, cfg, step_flops,
                                                    peak * jax.device_count(), peaks_total)
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
            save_final_model(cfg, parts, state, workdir, log, manifest)
    except BaseException:
        _stop(ckpt, writer, workdir, log)
        raise
    ckpt.close()
    writer.close()
    return last


def _sampler(cfg: ExperimentConfig, workdir: str, writer, mesh):
    """The fixed-prompt sampler of ``train.sample_every`` (None when off or without a tokenizer:
    synthetic-data runs have no text to prompt with)."""
    tok = run_tokenizer(cfg) if cfg.train.sample_every else None
    if tok is None:
        return None
    from janusflow.train.samples import FixedPromptSampler
    return FixedPromptSampler(cfg, tok, workdir, writer, primary=jax.process_index() == 0, mesh=mesh)


def _stop(ckpt: Checkpointer, writer, workdir: str, log):
    """The run failed (e.g. a non-finite step right after an asynchronous save): the save in
    flight is finished -- not left as a temporary directory, nor torn down with the
    interpreter in a cascade of event-loop tracebacks -- and files are closed before the
    error goes up. A failure in here must not hide the error that stopped the run."""
    try:
        ckpt.wait()  # the save in flight
        saved = ckpt.steps()
        ckpt.close()
        log(f"stopped; the newest checkpoint in {workdir} is " + (f"step {saved[-1]}" if saved else "none"))
    except Exception as e:  # noqa: BLE001
        log(f"stopped; finishing the checkpoint being saved failed too ({type(e).__name__}: {e})")
    writer.close()
