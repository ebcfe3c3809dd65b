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
