"""Paths that may be local or a cloud-storage URL (``gs://bucket/run``): one place decides
which, so no caller mangles a URL with ``os.path`` (``os.path.abspath("gs://b/x")`` is
``"/cwd/gs:/b/x"``) and every workdir read/write goes through ``etils.epath``.

Local paths are made absolute (orbax/tensorstore need absolute local paths); URLs are kept
verbatim. ``epath`` reaches ``gs://`` through fsspec, which needs ``gcsfs`` installed.
"""

from __future__ import annotations

import os
from typing import Union

from etils import epath

# the URL schemes epath has a backend for (etils.epath.gpath)
URL_SCHEMES = ("gs", "s3", "az", "hf")

PathLike = Union[str, os.PathLike]


def scheme(path: PathLike) -> str | None:
    """``"gs"`` for ``gs://b/x``, None for a local path. An unsupported ``scheme://`` is a
    ValueError naming it (``file://``, ``http://`` ... would otherwise become local paths)."""
    s = os.fspath(path)
    if "://" not in s:
        return None
    sch = s.split("://", 1)[0]
    if sch not in URL_SCHEMES:
        raise ValueError(f"path {s!r}: unsupported URL scheme {sch + '://'!r}; use a local path or "
                         + ", ".join(x + "://" for x in URL_SCHEMES))
    return sch


def is_local(path: PathLike) -> bool:
    return scheme(path) is None


def as_path(path: PathLike) -> epath.Path:
    """``epath.Path`` of ``path``: local paths absolute (``~`` expanded), URLs unchanged."""
    if is_local(path):
        return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    return epath.Path(os.fspath(path))


def join(path: PathLike, *parts: str) -> str:
    """``path/part/...`` as a string; a URL stays a URL, a local path stays as given (not
    made absolute, so log lines keep the user's spelling)."""
    if is_local(path):
        return os.path.join(os.fspath(path), *parts)
    return os.fspath(epath.Path(os.fspath(path)).joinpath(*parts))


class OutsideRoot(ValueError):
    """A path read from a user's file leads out of the folder it must stay in."""


def confined(root: str, rel: str, *, follow_symlinks: bool = True) -> str:
    """``root/rel`` when that stays inside the local folder ``root``, else OutsideRoot.

    A path read from a user's file (a captions line's image, a member name) must not reach
    other files the user can read: absolute paths and ``..`` that climbs out are refused, and
    with ``follow_symlinks`` so is a symlink anywhere on the way that resolves outside ``root``
    (the resolved path is returned, so what is checked is what is opened). Without it the
    check is lexical, for layouts whose symlinks point outside by design (the Hugging Face
    cache links ``snapshots/*/x`` to ``blobs/``).
    """
    if not isinstance(rel, str) or not rel or "\0" in rel:
        raise OutsideRoot(f"{rel!r} is not a relative path")
    if os.path.isabs(rel) or "://" in rel:
        raise OutsideRoot(f"{rel!r} is an absolute path; paths must be relative to {root}")
    base = os.path.abspath(root)
    path = os.path.normpath(os.path.join(base, rel))
    if not _within(path, base):
        raise OutsideRoot(f"{rel!r} leads outside {root}")
    if follow_symlinks:
        real, real_base = os.path.realpath(path), os.path.realpath(base)
        if not _within(real, real_base):
            raise OutsideRoot(f"{rel!r} is a symlink (or passes through one) leading outside {root}")
        return real
    return path


def plain_name(name: str, what: str = "name") -> str:
    """``name`` when it is one path component (no separator, not ``.``/``..``), else
    OutsideRoot: names from users' files that become file or folder names."""
    if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or os.sep in name
            or "\0" in name):
        raise OutsideRoot(f"{what} {name!r} must be a plain file name (no '/', not '.' or '..')")
    return name


def _within(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip(os.sep) + os.sep)
