"""A vendor CPU matmul (Intel MKL: AMX / AVX-512 kernels) as an XLA custom call.

Why: on the AMX Xeon XLA:CPU's own GEMM (YNNPACK / Eigen in jaxlib 0.10.2) runs well below
torch's (experiments/bf16_cpu.md section 6), and no XLA flag closes the gap. ``dot`` routes a
product to MKL's ``cblas_sgemm`` / ``cblas_gemm_bf16bf16f32`` instead, with a ``custom_vjp``
so training can use it too. ``ModelConfig.matmul_impl = "vendor"`` selects it for the LLM's
and SigLIP's dense layers.

The handler (``cpu_gemm.cc``) is compiled on first use with the system ``g++`` against the
XLA FFI headers (``jax.ffi.include_dir()``) and MKL from PyPI (``pip install mkl mkl-include``;
found under ``$JANUSFLOW_MKL_ROOT`` or the Python prefix, as ``lib/libmkl_rt.so.*`` and
``include/mkl_cblas.h``), by ``kernels/build.py``.
Without a compiler or MKL, or off CPU, ``dot`` is XLA's dot, and the first call says why in
one line on stderr.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from janusflow.kernels.build import Unavailable, compile_handler

TARGET = "janusflow_gemm"


def find_mkl() -> tuple[str, str]:
    """(include dir, path of libmkl_rt) of the first root that has both, else Unavailable."""
    roots = [r for r in (os.environ.get("JANUSFLOW_MKL_ROOT"), sys.prefix) if r]
    for root in roots:
        header = os.path.join(root, "include", "mkl_cblas.h")
        libs = sorted(glob.glob(os.path.join(root, "lib", "libmkl_rt.so*")))
        if os.path.isfile(header) and libs:
            return os.path.dirname(header), libs[-1]
    raise Unavailable(f"MKL not found under {' or '.join(roots)} (need include/mkl_cblas.h and "
                      "lib/libmkl_rt.so*: pip install mkl mkl-include, or set JANUSFLOW_MKL_ROOT)")


def build() -> str:
    """Compile the handler once per (source, jax, MKL, compiler); the path of the .so."""
    include, lib = find_mkl()
    return compile_handler("cpu_gemm", [f"-I{include}", f"-L{os.path.dirname(lib)}",
                                        f"-l:{os.path.basename(lib)}", f"-Wl,-rpath,{os.path.dirname(lib)}"])


@functools.cache
def available() -> bool:
    """Build and register the handler on the first call; False (said once) if it cannot be."""
    try:
        lib = ctypes.cdll.LoadLibrary(build())
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.JanusflowGemm), platform="cpu")
        return True
    except (Unavailable, OSError) as e:
        print(f"janusflow: vendor matmul unavailable, using XLA's dot: {e}", file=sys.stderr)
        return False


def use_vendor() -> bool:
    """The vendor kernel runs only on CPU (it is a CPU custom call)."""
    return jax.default_backend() == "cpu" and available()


def gemm(a, b, trans_a: bool = False, trans_b: bool = False):
    """op(a) @ op(b) for 2-D a, b of one dtype (fp32 or bf16), summed and returned in fp32."""
    m = a.shape[1] if trans_a else a.shape[0]
    n = b.shape[0] if trans_b else b.shape[1]
    if not use_vendor():
        a = a.T if trans_a else a
        b = b.T if trans_b else b
        return jnp.matmul(a, b, preferred_element_type=jnp.float32)
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((m, n), jnp.float32),
                            vmap_method="sequential")
    return call(a, b, trans_a=np.bool_(trans_a), trans_b=np.bool_(trans_b))


@jax.custom_vjp
def dot(x, w):
    """``x @ w`` for x (..., K) and w (K, N) of one dtype (fp32 or bf16), in fp32."""
    return gemm(x.reshape(-1, x.shape[-1]), w).reshape(*x.shape[:-1], w.shape[-1])


def _dot_fwd(x, w):
    return dot(x, w), (x, w)


def _dot_bwd(res, g):
    # The cotangent is rounded to the operands' dtype (as autocast does), so the backward
    # products run on the same kernel as the forward one, with fp32 sums.
    x, w = res
    x2 = x.reshape(-1, x.shape[-1])
    g2 = g.reshape(-1, g.shape[-1]).astype(x.dtype)
    dx = gemm(g2, w, trans_b=True).reshape(x.shape).astype(x.dtype)
    dw = gemm(x2, g2, trans_a=True).astype(w.dtype)
    return dx, dw


dot.defvjp(_dot_fwd, _dot_bwd)
