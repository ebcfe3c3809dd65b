# Runs before any test imports jax: simulate 8 host devices so sharding tests can build
# (data, fsdp, tensor) meshes on CPU. Tests that need one device just use jax.devices()[0].
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def pytest_configure(config):
    # registered, not deselected: slow tests run by default (`-m "not slow"` skips them)
    config.addinivalue_line("markers", "slow: takes more than ~30 s (e.g. several training processes)")
