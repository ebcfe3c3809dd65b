"""Device mesh ('data', 'fsdp', 'tensor') and multi-host start-up."""

from __future__ import annotations

import math
import os

import jax
import numpy as np
from jax.sharding import Mesh

from janusflow.config import ConfigError, MeshConfig

AXES = ("data", "fsdp", "tensor")


def resolve_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ConfigError(f"mesh {dict(zip(AXES, sizes))}: {num_devices} devices are not "
                              f"divisible by the fixed axes' product {known}")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ConfigError(f"mesh {dict(zip(AXES, sizes))} has {math.prod(sizes)} slots but "
                          f"{num_devices} devices are available")
    return tuple(sizes)


def make_mesh(cfg: MeshConfig = MeshConfig(), devices=None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    shape = resolve_shape(cfg, len(devices))
    try:
        # Topology-aware placement on TPU/GPU; falls back to plain order on CPU.
        arr = jax.experimental.mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:
        arr = np.asarray(devices).reshape(shape)
    return Mesh(arr, AXES)


def maybe_initialize_distributed() -> bool:
    """Call ``jax.distributed.initialize()`` when the launcher says this is a multi-process
    run (JANUSFLOW_DISTRIBUTED=1, or the standard coordinator variables are set). On Cloud TPU
    VMs ``initialize()`` discovers everything itself; elsewhere it reads
    JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID."""
    wanted = os.environ.get("JANUSFLOW_DISTRIBUTED") == "1" or "JAX_COORDINATOR_ADDRESS" in os.environ
    if not wanted:
        return False
    jax.distributed.initialize()
    return True
