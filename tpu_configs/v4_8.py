"""TPU v4-8: 4 chips = 4 JAX devices on one host.

Naming: v4 accelerator types count TensorCores; each v4 chip has two TensorCores that JAX
drives as one "megacore" device, so v4-8 is 4 chips / 4 devices (topology 2x2x1, one VM).
Peak 275 TFLOPS bf16 and 32 GiB HBM per chip (https://cloud.google.com/tpu/docs/v4).

Plan: FSDP over the 4 chips (the fp32 master weights, AdamW moments and EMA of the 1.3B model are
~29 GB, a quarter per chip). Remat ``save_dot_except_mlp_down``: each layer keeps its q/k/v/o
projections and the MLP's gate and up, so the backward pass recomputes only the attention core
(XLA/analytic FLOPs 1.03 against 1.20 with full remat, 4 full-width layers). Those saved
activations cost ~39 KB per token per layer in bf16, which at micro-batch 16 (17,296 tokens per
chip in stage 2) and 24 layers is ~16 GB more per chip than full remat: more than v4's 32 GiB
leave. Micro-batch 8 holds as many tokens (8,648) as micro-batch 16 did at the earlier recipe
lengths: stage 2's 2,048 rows = 8 x 4 x 64 accumulation steps. Measurements:
experiments/tpu_plans.md.
"""

from janusflow.configs.schema import MeshConfig
from janusflow.perf.platforms import Platform

# From MaxText's v4 configs (AI-Hypercomputer/maxtext @ e591f30,
# src/maxtext/configs/tpu/v4/22b.sh and 52b.sh): async all-gather and dense megacore mode.
LIBTPU_INIT_ARGS = "--xla_enable_async_all_gather=true TPU_MEGACORE=MEGACORE_DENSE"


def get_platform():
    return Platform(name="v4-8", chip="v4", devices=4, hosts=1,
                    mesh=MeshConfig(data=1, fsdp=4, tensor=1), micro_batch=8,
                    remat="save_dot_except_mlp_down", dtype="bfloat16",
                    env={"LIBTPU_INIT_ARGS": LIBTPU_INIT_ARGS}, topology="v4:2x2x1")
