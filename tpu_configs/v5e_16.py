"""TPU v5e-16 (gcloud accelerator type ``v5litepod-16``): 16 chips = 16 JAX devices, 2 hosts.

Naming: v5e types count chips (one TensorCore per chip): v5litepod-16 is the 4x4 topology,
16 chips on 2 VMs of 8 (https://cloud.google.com/tpu/docs/v5e). Peak 197 TFLOPS bf16 and
16 GB HBM per chip: the smallest memory here, so FSDP over all 16 chips and a micro-batch of 8:
stage 2's 2,048 rows = 8 x 16 x 16 accumulation steps. Remat ``save_dot_except_mlp`` (q/k/v/o
projections kept, the MLP recomputed): 13.21 GiB = 14.18 of 16 GB per chip by the TPU compiler
(11% free), XLA/analytic FLOP ratio 1.20 (``janusflow plan --flops-by-depth``); full remat needs
10.97 GB at a higher ratio (~1.28), ``save_dot_except_mlp_down`` ~8 GB more (no fit).
Micro-batch 4 does not divide stage 2's 256 understanding rows over 16 chips x 32 steps.
"""

from janusflow.configs.schema import MeshConfig
from janusflow.perf.platforms import Platform

# From MaxText's v5e configs (AI-Hypercomputer/maxtext @ e591f30,
# src/maxtext/configs/tpu/v5e/16b.sh, also 32b.sh ... llama2_13b.sh): data-parallel all-reduce
# optimisation and async collective fusion (overlap all-gathers with compute).
LIBTPU_INIT_ARGS = (
    "--xla_tpu_enable_data_parallel_all_reduce_opt=true"
    " --xla_tpu_data_parallel_opt_different_sized_ops=true"
    " --xla_tpu_enable_async_collective_fusion=true"
    " --xla_tpu_enable_async_collective_fusion_fuse_all_gather=true"
    " --xla_tpu_enable_async_collective_fusion_multiple_steps=true"
    " --xla_tpu_overlap_compute_collective_tc=true"
    " --xla_enable_async_all_gather=true")


def get_platform():
    return Platform(name="v5litepod-16", chip="v5e", devices=16, hosts=2,
                    mesh=MeshConfig(data=1, fsdp=16, tensor=1), micro_batch=8,
                    remat="save_dot_except_mlp", dtype="bfloat16",
                    env={"LIBTPU_INIT_ARGS": LIBTPU_INIT_ARGS}, topology="v5e:4x4")
