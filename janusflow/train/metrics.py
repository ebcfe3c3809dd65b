"""Metrics: JSONL (always) and TensorBoard event files (tensorboardX), plus a progress line."""

from __future__ import annotations

import json
import os
import time


class MetricsWriter:
    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled, self.workdir = enabled, workdir
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a") if enabled else None
        self._tb = None
        if enabled:
            try:
                from tensorboardX import SummaryWriter
                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
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

    def write_json(self, name: str, obj: dict):
        if self.enabled:
            with open(os.path.join(self.workdir, name), "w") as f:
                json.dump(obj, f, indent=2)

    def close(self):
        if self._jsonl:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def step_metrics(m: dict, step_time: float, batch, cfg, step_flops: float, peak_total: float) -> dict:
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
        terms = " ".join(f"{k[5:]}={m[k]:.4f}" for k in ("loss_ar", "loss_rf", "loss_repa") if k in m)
        self.log(f"step {step}/{self.end} loss={m['loss']:.4f} {terms} lr={m['lr']:.2e} "
                 f"{m['examples_per_s']:.1f} ex/s mfu={100 * m['mfu']:.1f}% eta {eta / 60:.1f} min")
