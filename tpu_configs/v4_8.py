"""TPU v4-8: 4 chips = 4 JAX devices on one host.

Naming: v4 accelerator types count TensorCores; each v4 chip has two TensorCores that JAX
drives as one "megacore" device, so v4-8 is 4 chips / 4 devices (topology 2x2x1, one VM).
Peak 275 TFLOPS bf16 and 32 GiB HBM per chip (https://cloud.google.com/tpu/docs/v4).

Plan: FSDP over the 4 chips (the fp32 master weights, AdamW moments and EMA of the 1.3B model are
~29 GB, a quarter per chip); remat per block. The paper's batch 512 is 16 per device x 4 x 8
accumulation steps (stage 3, batch 256: 4 steps).
"""

from janusflow.configs.schema import MeshConfig
from janusflow.perf.platforms import Platform

# From MaxText's v4 configs (AI-Hypercomputer/maxtext @ e591f30,
# src/maxtext/configs/tpu/v4/22b.sh and 52b.sh): async all-gather and dense megacore mode.
LIBTPU_INIT_ARGS = "--xla_enable_async_all_gather=true TPU_MEGACORE=MEGACORE_DENSE"


def get_platform():
    return Platform(name="v4-8", chip="v4", devices=4, hosts=1,
                    mesh=MeshConfig(data=1, fsdp=4, tensor=1), micro_batch=16,
                    remat="block", dtype="bfloat16",
                    env={"LIBTPU_INIT_ARGS": LIBTPU_INIT_ARGS}, topology="v4:2x2x1")
