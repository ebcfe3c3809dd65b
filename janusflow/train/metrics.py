"""Metrics: JSONL (always) and TensorBoard event files (tensorboardX), plus a progress line.

A local workdir is written in place. A cloud workdir (``gs://...``) cannot be appended to
(objects are immutable) and tensorboardX's own gs:// writer re-uploads the whole event file
on every flush and needs google-cloud-storage, so there both files are written to a local
staging directory and copied to the workdir every ``sync_every_s`` seconds and at close
(a resumed run first fetches the existing ``metrics.jsonl``). A run killed between two copies
loses at most ``sync_every_s`` of metric lines in the bucket; checkpoints are unaffected.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings

from janusflow import paths


class MetricsWriter:
    def __init__(self, workdir: str, enabled: bool = True, *, sync_every_s: float = 60.0, log=print):
        self.enabled, self.workdir = enabled, workdir
        self._jsonl, self._tb, self._stage = None, None, None
        if not enabled:
            return
        self._sync_every, self._last_sync = sync_every_s, time.monotonic()
        local = workdir
        if not paths.is_local(workdir):
            self._stage = local = tempfile.mkdtemp(prefix="janusflow_metrics_")
            remote = paths.as_path(workdir) / "metrics.jsonl"
            if remote.exists():  # resumed run: continue the existing record
                with open(os.path.join(local, "metrics.jsonl"), "wb") as f:
                    f.write(remote.read_bytes())
            log(f"workdir {workdir} is not local: metrics.jsonl and TensorBoard events are written to "
                f"{local} and copied to the workdir every {sync_every_s:.0f} s and at the end")
        self._jsonl = open(os.path.join(local, "metrics.jsonl"), "a")
        try:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(os.path.join(local, "tensorboard"))
        except ImportError:  # JSONL is the record; TensorBoard is a convenience
            self._tb = None

    def write(self, step: int, metrics: dict):
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._stage and time.monotonic() - self._last_sync >= self._sync_every:
            self.sync()

    def write_image(self, tag: str, image, step: int):
        """A uint8 (H, W, 3) image as a TensorBoard image summary (no-op without TensorBoard)."""
        if self.enabled and self._tb is not None:
            self._tb.add_image(tag, image, step, dataformats="HWC")
            self._tb.flush()

    def sync(self) -> bool:
        """Copy the staged files to a cloud workdir (no-op for a local one). A failed copy is a
        warning, retried at the next sync: metrics are not worth stopping a run for."""
        if not self._stage:
            return True
        self._last_sync = time.monotonic()
        try:
            dst = paths.as_path(self.workdir)
            for root, _, files in os.walk(self._stage):
                rel = os.path.relpath(root, self._stage)
                for name in files:
                    with open(os.path.join(root, name), "rb") as f:
                        data = f.read()
                    target = dst if rel == "." else dst / rel
                    target.mkdir(parents=True, exist_ok=True)
                    (target / name).write_bytes(data)
        except Exception as e:  # noqa: BLE001 -- transient storage errors must not kill training
            warnings.warn(f"copying metrics to {self.workdir} failed ({type(e).__name__}: {e}); "
                          "retrying at the next sync")
            return False
        return True

    def write_json(self, name: str, obj: dict):
        if self.enabled:
            (paths.as_path(self.workdir) / name).write_text(json.dumps(obj, indent=2))

    def close(self):
        if self._jsonl:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._stage:
            if self.sync():
                shutil.rmtree(self._stage, ignore_errors=True)
            else:
                warnings.warn(f"the metrics of this run stay in {self._stage}")
            self._stage = None


def step_metrics(m: dict, step_time: float, batch, cfg, step_flops: float, peak_total: float,
                 peaks_total: dict | None = None) -> dict:
    """``mfu`` is against ``peak_total`` (the compute dtype's peak, all devices);
    ``peaks_total`` ({dtype: FLOP/s}) adds ``mfu_<dtype>`` against each."""
    n_ex, n_tok = 0, 0
    for task, b in batch.items():
        if task == "gen":
            bsz, plen = b["prompt_ids"].shape
            n_ex += bsz
            n_tok += bsz * (plen + 1 + cfg.model.num_gen_tokens)
        else:
            n_ex += b["ids"].shape[0]
            n_tok += b["ids"].shape[0] * b["ids"].shape[1]
    out = {k: float(v) for k, v in m.items() if k != "finite"}
    out.update(step_time=step_time, examples_per_s=n_ex / step_time, tokens_per_s=n_tok / step_time,
               mfu=step_flops / step_time / peak_total)
    out.update({f"mfu_{d}": step_flops / step_time / p for d, p in (peaks_total or {}).items()})
    return out


class Progress:
    """One line per log step: step, losses, speed and ETA."""

    def __init__(self, start: int, end: int, log):
        self.start, self.end, self.log = start, end, log
        self.t0 = time.perf_counter()

    def update(self, step: int, m: dict):
        elapsed = time.perf_counter() - self.t0
        rate = (step - self.start) / max(elapsed, 1e-9)
        eta = (self.end - step) / max(rate, 1e-9)
        terms = " ".join(f"{k[5:]}={m[k]:.4f}" for k in ("loss_ar", "loss_rf", "loss_repa", "loss_img")
                         if k in m and (m[k] or k != "loss_img"))
        self.log(f"step {step}/{self.end} loss={m['loss']:.4f} {terms} lr={m['lr']:.2e} "
                 f"{m['examples_per_s']:.1f} ex/s mfu={100 * m['mfu']:.1f}% eta {eta / 60:.1f} min")
