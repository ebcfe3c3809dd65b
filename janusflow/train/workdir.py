"""Workdir ownership: one run at a time, and a record of what the run wrote.

- ``WORKDIR/janusflow.lock`` says which run holds the workdir (pid, host, start time). A second
  run on the same workdir is refused in one line naming the holder. On local disk the lock is
  an ``flock`` on that file, which the kernel drops when the holder dies (even by SIGKILL), so
  a lock file left by a dead run is simply taken over. Object stores (``gs://``) have no
  locks: there the file is advisory -- a holder on this host whose pid is gone is taken over,
  one on another host is refused (its liveness cannot be checked) with how to clear it.
- ``WORKDIR/janusflow_run.json`` (the manifest) lists the files the run wrote into the folders
  it replaces (``model``, ``model_ema``). A folder is only ever replaced when every file in it
  is one the run wrote; anything else there (a user's notes, another model) makes the run stop
  with one line, having deleted nothing. A folder being written when the run was killed is
  recorded as such with the top-level names its writer creates, so that half-written folder
  can be replaced too -- but nothing else found in it.

Only process 0 of a multi-host run calls these (the others write no files); the caller passes
``primary`` explicitly and shares the outcome (:func:`agree`).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
from typing import Callable, Optional

from janusflow import paths

LOCK_NAME = "janusflow.lock"
MANIFEST_NAME = "janusflow_run.json"
FORMAT = "janusflow-run"
VERSION = 1


class WorkdirInUseError(RuntimeError):
    """Another run holds the workdir."""


class WorkdirOwnershipError(FileExistsError):
    """A folder the run would replace holds files the run did not write."""


def _holder_text(raw: str) -> str:
    try:
        h = json.loads(raw)
        return f"pid {int(h['pid'])} on host {h['host']}, started {h['started']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


def _me() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class WorkdirLock:
    """``with WorkdirLock(workdir, log): ...`` -- refuses (``WorkdirInUseError``) when another
    run holds ``workdir``; the lock file is removed on exit."""

    def __init__(self, workdir: str, log: Callable = print):
        self.workdir, self.log = workdir, log
        self.path = paths.as_path(workdir) / LOCK_NAME
        self._fd: Optional[int] = None

    def _in_use(self, holder: str) -> WorkdirInUseError:
        return WorkdirInUseError(
            f"workdir {self.workdir} is in use by another run ({holder}); wait for it to end or use "
            "another --workdir")

    def __enter__(self):
        paths.as_path(self.workdir).mkdir(parents=True, exist_ok=True)
        if paths.is_local(self.workdir):
            self._lock_local()
        else:
            self._lock_object()
        return self

    def _lock_local(self):
        import fcntl
        path = os.fspath(self.path)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                try:
                    holder = _holder_text(open(path).read())
                except OSError:
                    holder = "holder unknown"
                raise self._in_use(holder) from None
            # the file may have been removed (and another run may lock a new one) between our
            # open and flock: only the lock on the file now at ``path`` counts
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        old = os.read(fd, 4096).decode("utf-8", "replace")
        if old.strip():  # the holder died without removing its file: the kernel dropped its lock
            self.log(f"{self.path}: the run that held this workdir ({_holder_text(old)}) is gone; "
                     "taking the workdir over")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_me()).encode(), 0)
        self._fd = fd

    def _lock_object(self):
        me = _me()
        if self.path.exists():
            raw = self.path.read_text()
            try:
                h = json.loads(raw)
                stale = h["host"] == me["host"] and not _pid_alive(int(h["pid"]))
            except (ValueError, KeyError, TypeError):
                stale = False
            if not stale:
                raise WorkdirInUseError(
                    f"workdir {self.workdir} is in use by another run ({_holder_text(raw)}); if that run "
                    f"has ended, delete {self.path}")
            self.log(f"{self.path}: the run that held this workdir ({_holder_text(raw)}) is gone; "
                     "taking the workdir over")
        text = json.dumps(me)
        self.path.write_text(text)
        # no atomic create-if-absent through epath: a racing writer wins the last write, and the
        # loser sees it here (best effort)
        if self.path.read_text() != text:
            raise self._in_use(_holder_text(self.path.read_text()))

    def __exit__(self, *exc):
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # while still holding the lock (see _lock_local)
            os.close(self._fd)
            self._fd = None
        elif not paths.is_local(self.workdir):
            with contextlib.suppress(OSError):
                self.path.unlink()


def _files(root) -> list[str]:
    """Relative paths of every file under ``root`` (an epath.Path)."""
    out = []
    for p in root.iterdir():
        if p.is_dir():
            out += [f"{p.name}/{f}" for f in _files(p)]
        else:
            out.append(p.name)
    return sorted(out)


class Manifest:
    """``WORKDIR/janusflow_run.json``: the folders this workdir's runs wrote, with their files."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = paths.as_path(workdir) / MANIFEST_NAME
        self.wrote: dict = {}     # folder -> [relative paths of the files the run wrote there]
        self.writing: dict = {}   # folder being written -> [top-level names its writer creates]
        if self.path.exists():
            try:
                d = json.loads(self.path.read_text())
            except ValueError as e:
                raise ValueError(f"{self.path}: not JSON ({e}); it is janusflow's record of what the "
                                 "run wrote -- restore or remove it") from None

            def names(v):
                return isinstance(v, dict) and all(isinstance(x, list) and all(isinstance(f, str) for f in x)
                                                   for x in v.values())
            if not (isinstance(d, dict) and d.get("format") == FORMAT and names(d.get("wrote"))
                    and names(d.get("writing", {}))):
                raise ValueError(f"{self.path}: not a {FORMAT} manifest (expected {{\"format\": "
                                 f"\"{FORMAT}\", \"wrote\": {{folder: [files]}}, \"writing\": {{...}}}})")
            self.wrote, self.writing = d["wrote"], d.get("writing", {})

    def check_replaceable(self, name: str) -> None:
        """Raise unless ``WORKDIR/name`` is absent or holds only files the run wrote."""
        root = paths.as_path(self.workdir) / name
        if not root.exists():
            return
        ours = set(self.wrote.get(name, ()))
        partial = set(self.writing.get(name, ()))
        foreign = ([f for f in _files(root) if f not in ours and f.split("/")[0] not in partial]
                   if root.is_dir() else [name])
        if foreign or not (ours or name in self.writing):
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise WorkdirOwnershipError(
                f"{paths.join(self.workdir, name)} holds files this run did not write "
                f"({shown or 'no record of the run writing it'}); nothing was deleted: move them away "
                "(the run resumes from its checkpoints and writes the final model)")

    def replace(self, name: str, creates: tuple) -> None:
        """Remove ``WORKDIR/name`` (only if :meth:`check_replaceable` passes) and record that the
        run is about to write it, creating the top-level names ``creates``."""
        self.check_replaceable(name)
        root = paths.as_path(self.workdir) / name
        if root.exists():
            root.rmtree()
        self.wrote.pop(name, None)
        self.writing[name] = sorted(creates)
        self._save()

    def record(self, name: str) -> None:
        """``WORKDIR/name`` was just written by the run: remember its files."""
        self.wrote[name] = _files(paths.as_path(self.workdir) / name)
        self.writing.pop(name, None)
        self._save()

    def _save(self):
        text = json.dumps({"format": FORMAT, "version": VERSION, "wrote": self.wrote, "writing": self.writing},
                          indent=1)
        if paths.is_local(self.workdir):  # write + rename: never seen half-written
            tmp = self.path.parent / (MANIFEST_NAME + ".tmp")
            tmp.write_text(text)
            tmp.replace(self.path)
        else:  # an object upload is atomic already
            self.path.write_text(text)


def on_every_process(error: Optional[BaseException], what: str) -> None:
    """Process 0's outcome of a workdir check, shared: it raises ``error``; on a multi-host run
    the other processes (which checked nothing) raise too instead of waiting for it forever."""
    import jax
    failed = error is not None
    if jax.process_count() > 1:
        import numpy as np
        from jax.experimental import multihost_utils
        failed = bool(multihost_utils.broadcast_one_to_all(np.int32(failed)))
    if error is not None:
        raise error
    if failed:
        raise RuntimeError(f"{what} (see process 0's error)")


@contextlib.contextmanager
def hold(workdir: str, primary: bool, *, replaces: tuple = (), log: Callable = print):
    """The run's hold on ``workdir``: process 0 takes the lock and checks, before any work,
    that the folders ``replaces`` may be replaced; yields the :class:`Manifest` (None on the
    other processes, which write no files)."""
    lock, manifest, error = None, None, None
    if primary:
        try:
            lock = WorkdirLock(workdir, log).__enter__()
            manifest = Manifest(workdir)
            for name in replaces:
                manifest.check_replaceable(name)
        except (RuntimeError, OSError, ValueError) as e:  # in use, not ours, unreadable manifest, I/O
            error = e
            if lock is not None:
                lock.__exit__(None, None, None)
    on_every_process(error, f"workdir {workdir} refused")
    try:
        yield manifest
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)
