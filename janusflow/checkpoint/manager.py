"""Train-state checkpoints: orbax ``CheckpointManager`` with three items per step.

- ``state``: the TrainState pytree (params, frozen, VAE, optimizer, EMA, step, RNG), restored
  directly into the target shardings;
- ``data``: the data iterator position (JSON), so a resumed run sees the same next batch;
- ``meta``: the experiment config and the model's parameter shapes (JSON), checked on resume
  so a workdir holding a different model is refused, never overwritten.

A latest checkpoint that fails to restore (truncated write, corrupt file) is skipped with a
warning and the previous one is used. When none restores, the run stops
(``UnrestorableCheckpointsError``) rather than silently training from step 0 and replacing
the earlier run's final model; starting over is the user's explicit choice.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import warnings
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from janusflow import paths
from janusflow.configs import io as config_io


class CheckpointMismatchError(RuntimeError):
    """The workdir holds checkpoints of a different model/experiment."""


class UnrestorableCheckpointsError(RuntimeError):
    """The workdir holds checkpoints, and not one of them restores."""


def shape_signature(abstract_state) -> dict:
    """{parameter path: shape} of the trainable + frozen parameters: what makes two runs
    compatible."""
    sig = {}
    for part in ("params", "frozen"):
        flat = jax.tree_util.tree_flatten_with_path(getattr(abstract_state, part))[0]
        for path, leaf in flat:
            sig[part + jax.tree_util.keystr(path)] = list(leaf.shape)
    return sig


class Checkpointer:
    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        # epath.Path: absolute for a local directory, verbatim for gs:// (orbax takes both and
        # coordinates the processes of a multi-host run itself)
        self.directory = paths.as_path(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 enable_async_checkpointing=async_save),
            item_names=("state", "data", "meta"))

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, data_state: dict, meta: dict, *, force: bool = False) -> bool:
        saved = self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(meta)), force=force)
        return bool(saved)

    def wait(self):
        self.manager.wait_until_finished()

    def check_compatible(self, meta: dict) -> None:
        """Refuse a workdir whose checkpoints were written for another model shape."""
        steps = self.steps()
        if not steps:
            return
        try:
            old = self.manager.restore(steps[-1], args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception:
            return  # unreadable latest: restore_latest will fall back and re-check
        self._compare(old, meta, steps[-1])

    def _compare(self, old: dict, meta: dict, step: int):
        a, b = old.get("shapes", {}), meta.get("shapes", {})
        if a != b:
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))[:5]
            raise CheckpointMismatchError(
                f"{self.directory} holds checkpoints (step {step}) of a different model: "
                f"parameters differ at {', '.join(diff)}. Use another --workdir; nothing was "
                "overwritten.")

    def restore_latest(self, abstract_state_with_shardings, meta: dict) -> Optional[tuple[int, Any, dict]]:
        """(step, state, data_state) of the newest checkpoint that restores; None when there is
        no checkpoint; ``UnrestorableCheckpointsError`` when there are some and none restores."""
        failed = []
        for step in reversed(self.steps()):
            try:
                out = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state_with_shardings),
                    data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
            except Exception as e:  # truncated/corrupt: fall back to the previous one
                failed.append((step, f"{type(e).__name__}: {' '.join(str(e).split())[:120]}"))
                continue
            for bad, why in failed:
                warnings.warn(f"checkpoint at step {bad} in {self.directory} could not be restored ({why}); "
                              f"resuming from step {step}")
            self._compare(out["meta"], meta, step)
            return step, out["state"], out["data"]
        if failed:
            raise UnrestorableCheckpointsError(
                f"no checkpoint in {self.directory} restores ("
                + "; ".join(f"step {bad}: {why}" for bad, why in failed) + "); nothing was changed. "
                "To train from step 0 instead, pass --start-over (the checkpoints are kept, moved aside)")
        return None

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


# What a gs:// workdir needs beyond orbax's own dependencies: epath reaches gs:// through
# fsspec + gcsfs, and orbax lists/deletes checkpoint steps on GCS with google-cloud-storage.
GCS_PACKAGES = {"gcsfs": "gcsfs", "google.cloud.storage": "google-cloud-storage"}


def missing_gcs_packages() -> list[str]:
    missing = []
    for module, dist in GCS_PACKAGES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # parent package (google.cloud) absent
            found = False
        if not found:
            missing.append(dist)
    return missing


def check_workdir(workdir: str, min_free_bytes: int = 1 << 30) -> None:
    """Clear error before training starts: the workdir must be creatable, writable, with
    some free space. ``workdir`` may be local or a ``gs://`` URL."""
    if paths.scheme(workdir) == "gs":
        missing = missing_gcs_packages()
        if missing:
            raise ImportError(f"workdir {workdir!r} is on Google Cloud Storage, which needs "
                              f"{', '.join(missing)} (pip install {' '.join(missing)})")
    root = paths.as_path(workdir)
    # Every process of a multi-host run probes the same (shared) workdir: a per-host, per-pid
    # name so no process deletes another's probe. No jax call here: this may run before
    # jax.distributed.initialize().
    probe = root / f".write_probe-{socket.gethostname()}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink(missing_ok=True)
    except OSError as e:
        raise OSError(f"workdir {workdir!r} is not writable: {e}") from None
    if not paths.is_local(workdir):
        # Object stores have no "free space" to ask for (quota errors surface on write).
        return
    free = shutil.disk_usage(root).free
    if free < min_free_bytes:
        raise OSError(f"workdir {workdir!r} has only {free / 2**20:.0f} MiB free; "
                      f"need at least {min_free_bytes / 2**20:.0f} MiB")


def meta_for(cfg, abstract_state) -> dict:
    return {"config": json.loads(config_io.dumps(cfg)), "shapes": shape_signature(abstract_state)}
