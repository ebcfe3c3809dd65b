# Runs before any test imports jax: simulate 8 host devices so sharding tests can build
# (data, fsdp, tensor) meshes on CPU. Tests that need one device just use jax.devices()[0].
import os
import re

import pytest

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def with_device_count(xla_flags: str, n: int) -> str:
    """``xla_flags`` with the host device count set to ``n``, every other flag kept: a value
    already in the environment must not silently leave the 8-device tests on one device."""
    kept = re.sub(rf"{DEVICE_COUNT_FLAG}=\S*", "", xla_flags).split()
    return " ".join(kept + [f"{DEVICE_COUNT_FLAG}={n}"])


os.environ["XLA_FLAGS"] = with_device_count(os.environ.get("XLA_FLAGS", ""), 8)
os.environ["JAX_PLATFORMS"] = "cpu"

# One persistent compilation cache for the whole run, shared by the xdist workers (they inherit
# this environment) and by the subprocesses the end-to-end tests start: many tests compile the
# same tiny programs, and on a 2-core machine compiling is most of the suite's time. Entries are
# keyed by the program, flags and jax version, so a hit returns the same executable. A cache the
# caller names (JAX_COMPILATION_CACHE_DIR) is used as is; the run's own is removed at the end.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="janusflow-tests-jax-cache-")
    os.environ["JANUSFLOW_TESTS_OWN_JAX_CACHE"] = os.environ["JAX_COMPILATION_CACHE_DIR"]
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


def pytest_configure(config):
    # the README's test command (and .ci/run) leaves these out with `-m "not slow"`; `-m slow` runs them
    config.addinivalue_line("markers", "slow: an end-to-end test of a minute or more on CPU (training "
                            "processes, whole recipes, TPU compiles): the slow tier, `pytest -m slow`")


def pytest_unconfigure(config):
    own = os.environ.get("JANUSFLOW_TESTS_OWN_JAX_CACHE")
    if own and not hasattr(config, "workerinput"):   # the controller, after every worker ended
        import shutil
        shutil.rmtree(own, ignore_errors=True)


def pytest_addoption(parser):
    parser.addoption("--scan-layers", action="store_true",
                     help="build every LLM and SigLIP tower with scanned layers (stacked parameters), "
                          "whatever the config says: runs the parity tests against the scanned path")


def pytest_sessionstart(session):
    if not session.config.getoption("--scan-layers"):
        return
    import functools

    from janusflow.models.llm import LLM
    from janusflow.models.siglip import SiglipVisionTower
    for cls in (LLM, SiglipVisionTower):
        init = cls.__init__

        @functools.wraps(init)
        def scanned(self, *a, _init=init, **kw):
            _init(self, *a, **{**kw, "scan": True})
        cls.__init__ = scanned


@pytest.fixture(autouse=True, scope="module")
def free_compiled_programs():
    """After each test module, drop jax's caches of traced and compiled programs: one process
    runs the whole suite, and a fresh-clone run once crashed (SIGSEGV inside XLA:CPU's compile)
    after ~450 tests whose files pass on their own."""
    yield
    import gc

    import jax
    jax.clear_caches()
    gc.collect()
