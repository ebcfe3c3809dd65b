# Runs before any test imports jax: simulate 8 host devices so sharding tests can build
# (data, fsdp, tensor) meshes on CPU. Tests that need one device just use jax.devices()[0].
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def pytest_configure(config):
    # run by default; `-m "not slow"` leaves out the tests that take over ~30 s
    config.addinivalue_line("markers", "slow: takes over ~30 s (full-width compiles)")
