"""Compile-only TPU devices from libtpu, without a TPU: the TPU compiler's own memory plan.

``pip install "janusflow[tpu]"`` (jax[tpu] at the installed jax version) brings libtpu from the
package index; ``jax.experimental.topologies`` then describes a slice (``v4:2x2x1``) whose
devices jit can lower and compile for, but never run on. ``janusflow plan`` uses these when a
platform file names a topology.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from typing import Optional


def libtpu_version() -> Optional[str]:
    """The installed libtpu's version, or None when it cannot be imported."""
    if importlib.util.find_spec("libtpu") is None:
        return None
    try:
        return importlib.metadata.version("libtpu")
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


def topology_devices(platform) -> list:
    """The devices of ``platform.topology`` (compile-only). Call in a process whose jax has
    not started a TPU backend (``JAX_PLATFORMS=cpu`` keeps it from looking for chips)."""
    from jax.experimental import topologies

    topo = topologies.get_topology_desc(
        platform.topology, platform="tpu",
        chip_config_name="megacore" if platform.spec.megacore else "default",
        chips_per_host_bounds=platform.chips_per_host_bounds, num_slices=1, wrap=(False,) * 3)
    devices = list(topo.devices)
    if len(devices) != platform.devices:
        raise RuntimeError(f"topology {platform.topology} has {len(devices)} devices, the platform "
                           f"{platform.name} {platform.devices}")
    return devices
