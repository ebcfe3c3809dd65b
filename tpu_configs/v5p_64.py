"""TPU v5p-64: 32 chips = 32 JAX devices on 8 hosts.

Naming: v5p accelerator types count TensorCores, not chips: "v5p-32 specifies a v5p TPU slice
with 32 TensorCores (16 chips)" (https://cloud.google.com/tpu/docs/v5p). Each chip's two
TensorCores form one megacore JAX device, so v5p-64 is 32 chips / 32 devices, topology 2x4x4,
8 VMs of 4 chips. Peak 459 TFLOPS bf16 and 95 GB HBM2e per chip.

Plan: FSDP over all 32 chips; 95 GB leaves room to keep each layer's q/k/v/o projections and
the MLP's gate and up (remat ``save_dot_except_mlp_down``: only the attention core is
recomputed, XLA/analytic FLOPs 1.03 at 4 full-width layers). Stage 2's 2,048 rows = 16 x 32 x 4
accumulation steps. Without accumulation (~65k tokens per chip) this policy's saved activations
alone would be ~61 GB per chip (estimate); ``:remat=save_dot_except_mlp,micro_batch=64`` keeps
q/k/v/o only and fits: 66.81 GiB per chip by the TPU compiler (24% free), at more recompute
(FLOP ratio ~1.19 extrapolated, against 1.03), so this file keeps 16 x 4.
Stage 3 (768 rows) needs ``--platform tpu_configs/v5p_64.py:micro_batch=8``.
"""

from janusflow.configs.schema import MeshConfig
from janusflow.perf.platforms import Platform

# From MaxText's v5p configs (AI-Hypercomputer/maxtext @ e591f30,
# src/maxtext/configs/tpu/v5p/llama2_7b.sh; 32b.sh adds SparseCore offload flags on top):
# async collective fusion, all-gather backward pipelining, data-parallel all-reduce optimisation.
LIBTPU_INIT_ARGS = (
    "--xla_tpu_enable_async_collective_fusion_fuse_all_gather=true"
    " --xla_tpu_megacore_fusion_allow_ags=false"
    " --xla_enable_async_collective_permute=true"
    " --xla_tpu_enable_ag_backward_pipelining=true"
    " --xla_tpu_enable_data_parallel_all_reduce_opt=true"
    " --xla_tpu_data_parallel_opt_different_sized_ops=true"
    " --xla_tpu_enable_async_collective_fusion=true"
    " --xla_tpu_enable_async_collective_fusion_multiple_steps=true"
    " --xla_tpu_overlap_compute_collective_tc=true"
    " --xla_enable_async_all_gather=true")


def get_platform():
    return Platform(name="v5p-64", chip="v5p", devices=32, hosts=8,
                    mesh=MeshConfig(data=1, fsdp=32, tensor=1), micro_batch=16,
                    remat="save_dot_except_mlp_down", dtype="bfloat16",
                    env={"LIBTPU_INIT_ARGS": LIBTPU_INIT_ARGS}, topology="v5p:2x4x4")
