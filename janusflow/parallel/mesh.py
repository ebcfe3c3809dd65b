"""Device mesh ('data', 'fsdp', 'tensor') and multi-host start-up."""

from __future__ import annotations

import math
import os

import jax
import numpy as np
from jax.sharding import Mesh

from janusflow.configs.schema import ConfigError, MeshConfig

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


# Where a launcher names the coordinator and this process (first match wins): janusflow's own
# variables, then JAX's standard ones (which jax.distributed.initialize() also reads itself).
DIST_ENV = {"coordinator": ("JANUSFLOW_COORDINATOR", "JAX_COORDINATOR_ADDRESS"),
            "num_processes": ("JANUSFLOW_NUM_PROCESSES", "JAX_NUM_PROCESSES"),
            "process_id": ("JANUSFLOW_PROCESS_ID", "JAX_PROCESS_ID")}


def _env(name: str, env) -> tuple[str, str] | None:
    for var in DIST_ENV[name]:
        if env.get(var, "") != "":
            return var, env[var]
    return None


def _int_field(raw: str, where: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{where}: expected an int, got {raw!r}") from None


def distributed_args(coordinator: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, env=None) -> dict | None:
    """The ``jax.distributed.initialize`` arguments a launch asks for, or None for a single-
    process run. Explicit arguments (``janusflow train --coordinator ...``) win over the
    environment. ``{}`` means "initialize() discovers everything" (Cloud TPU VMs, SLURM, with
    ``JANUSFLOW_DISTRIBUTED=1``)."""
    env = os.environ if env is None else env
    args, where = {}, {}
    for name, value in (("coordinator", coordinator), ("num_processes", num_processes),
                        ("process_id", process_id)):
        if value is not None:
            args[name], where[name] = value, f"--{name.replace('_', '-')}"
        elif (hit := _env(name, env)) is not None:
            var, raw = hit
            args[name] = raw if name == "coordinator" else _int_field(raw, var)
            where[name] = var
    if not args:
        return {} if env.get("JANUSFLOW_DISTRIBUTED") == "1" else None
    if "coordinator" in args and ("num_processes" in args) != ("process_id" in args):
        missing = "process id" if "num_processes" in args else "process count"
        raise ConfigError(f"{where.get('num_processes') or where.get('process_id')} is set but the "
                          f"{missing} is not: set both (or neither, where jax discovers them)")
    n, i = args.get("num_processes"), args.get("process_id")
    if n is not None and n < 1:
        raise ConfigError(f"{where['num_processes']}: the process count must be >= 1, got {n}")
    if i is not None and not 0 <= i < (n if n is not None else i + 1):
        raise ConfigError(f"{where['process_id']}: process id {i} is not in [0, {n})")
    out = {}
    if "coordinator" in args:
        out["coordinator_address"] = args["coordinator"]
    if n is not None:
        out["num_processes"] = n
    if i is not None:
        out["process_id"] = i
    return out


def maybe_initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                                 process_id: int | None = None) -> bool:
    """Call ``jax.distributed.initialize`` when the launch is multi-process: the coordinator
    address, process count and id come from the arguments or the environment
    (``JANUSFLOW_COORDINATOR`` / ``_NUM_PROCESSES`` / ``_PROCESS_ID``, else ``JAX_COORDINATOR_ADDRESS``
    / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``); with only ``JANUSFLOW_DISTRIBUTED=1`` jax
    discovers them itself (Cloud TPU VMs, SLURM). The same entry serves every launcher:
    ``tpu_configs/launch_tpu.sh``, a GPU node per process, the localhost test."""
    args = distributed_args(coordinator, num_processes, process_id)
    if args is None:
        return False
    jax.distributed.initialize(**args)
    return True
