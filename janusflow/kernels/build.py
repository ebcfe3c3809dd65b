"""Compile this package's XLA FFI handlers (``.cc`` files beside this file) into shared
libraries on first use, cached under ``$XDG_CACHE_HOME/janusflow/kernels`` (default ``~/.cache``)
by a hash of the sources, the headers here, jax's version, the flags and the compiler, so there
is no build step at install and a changed source or jax is rebuilt. Concurrent first uses each
compile; one file remains (atomic rename).

The decoding kernels (``cpu_gemv.cc``, ``cpu_gemv_t.cc``, ``cpu_gemv_packed.cc``,
``cpu_decode_attention.cc``, ``cpu_decode_block.cc``) are built into one library so that they
share one thread pool (``thread_pool.h``); ``bf16.h`` holds their bf16 conversions,
``product_ffi.h`` the product handlers' checks, ``gemv_packed.h`` and ``decode_attention.h`` the
packed products and the attention that the block kernel runs too."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile

import jax

HERE = os.path.dirname(os.path.abspath(__file__))


class Unavailable(RuntimeError):
    """A kernel cannot be built or loaded here (the message says why)."""


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "janusflow", "kernels")


def compile_handler(name: str, flags: list[str]) -> str:
    """The path of ``<name>.so`` built from ``<name>.cc`` (:func:`compile_library`)."""
    return compile_library(name, [f"{name}.cc"], flags)


def compile_library(name: str, sources: list[str], flags: list[str]) -> str:
    """The path of ``<name>.so`` built from ``sources`` (files here) with ``g++`` (or ``$CXX``),
    the XLA FFI headers and ``flags`` (include dirs, libraries, ISA switches)."""
    cxx = os.environ.get("CXX") or shutil.which("g++")
    if not cxx:
        raise Unavailable("no C++ compiler (g++ or $CXX) on PATH")
    paths = [os.path.join(HERE, s) for s in sources]
    headers = sorted(os.path.join(HERE, f) for f in os.listdir(HERE) if f.endswith(".h"))
    texts = []
    for path in paths + headers:
        with open(path, "rb") as f:
            texts.append(f.read())
    key = hashlib.sha256(b"\0".join([*texts, jax.__version__.encode(), cxx.encode(), *map(str.encode, flags)]))
    out = os.path.join(cache_dir(), f"{name}-{key.hexdigest()[:16]}.so")
    if os.path.isfile(out):
        return out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(out))
    os.close(fd)
    # sources before libraries: the linker resolves a library only for what precedes it
    libs = [f for f in flags if f.startswith(("-l", "-L", "-Wl,"))]
    opts = [f for f in flags if f not in libs]
    cmd = [cxx, "-O2", "-shared", "-fPIC", "-std=c++17", "-w", f"-I{jax.ffi.include_dir()}", f"-I{HERE}", *opts,
           *paths, "-o", tmp, *libs]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            err = (done.stderr.strip().splitlines() or ["?"])[-1]
            raise Unavailable(f"building {', '.join(paths)} failed: {err}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


AVX512 = ["-O3", "-mavx512f", "-mavx512bw", "-pthread"]
DECODING_KERNELS = ["cpu_gemv.cc", "cpu_gemv_t.cc", "cpu_gemv_packed.cc", "cpu_decode_attention.cc",
                    "cpu_decode_block.cc"]


def register_avx512(name: str, handler: str, target: str, fallback: str) -> bool:
    """Build the decoding kernels' library (:data:`DECODING_KERNELS`, AVX-512) if needed, check
    that this CPU runs ``name``'s kernel (the library's ``<handler>Supported``) and register
    ``handler`` as the CPU FFI target ``target``. False, saying why in one line on stderr
    (``fallback``: what runs instead), if it cannot be."""
    import ctypes
    import sys
    try:
        lib = ctypes.cdll.LoadLibrary(compile_library("cpu_decoding_kernels", DECODING_KERNELS, AVX512))
        if not getattr(lib, f"{handler}Supported")():
            raise Unavailable("this CPU lacks AVX-512 F/BW")
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, handler)), platform="cpu")
        return True
    except (Unavailable, OSError) as e:
        print(f"janusflow: {name} unavailable, using {fallback}: {e}", file=sys.stderr)
        return False
