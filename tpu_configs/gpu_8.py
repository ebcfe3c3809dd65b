"""One 8-GPU node: 8x H100 SXM 80 GB (``--platform tpu_configs/gpu_8.py:chip=a100`` for 8x A100
80 GB), 8 JAX devices, one process.

H100 SXM: 989 TFLOPS dense bf16, 80 GB HBM3 per GPU (NVIDIA datasheet). FSDP over the 8 GPUs
(NVLink), remat "dots". Batch 512 = 16 x 8 x 4 accumulation steps (stage 3,
256: 2 steps).

cuDNN flash attention is not switched on here (``--set model.attention_impl=cudnn``): it is
untested with this model's masks.
"""

from janusflow.configs.schema import MeshConfig
from janusflow.perf.platforms import Platform

# From MaxText's single-node A3 (8x H100) recipe (AI-Hypercomputer/maxtext @ e591f30,
# src/maxtext/configs/gpu/a3/llama_2_7b/1vm.sh), without its --xla_dump_to and without
# --xla_gpu_pipeline_{all_gather,reduce_scatter,all_reduce}=on: the installed jaxlib 0.10.2
# rejects those three ("Unknown flag in XLA_FLAGS", a fatal error at start-up); every flag
# kept here parses (tests/test_plan.py checks that with this jaxlib). The recipe's
# --xla_gpu_enable_command_buffer='' is written as an empty value (command buffers off).
XLA_FLAGS = (
    "--xla_gpu_enable_latency_hiding_scheduler=true"
    " --xla_gpu_enable_triton_gemm=false"
    " --xla_gpu_enable_command_buffer="
    " --xla_gpu_enable_highest_priority_async_stream=true"
    " --xla_gpu_all_reduce_combine_threshold_bytes=134217728"
    " --xla_gpu_all_gather_combine_threshold_bytes=134217728"
    " --xla_gpu_reduce_scatter_combine_threshold_bytes=67108864"
    " --xla_gpu_enable_while_loop_double_buffering=true"
    " --xla_gpu_enable_all_gather_combine_by_dim=false"
    " --xla_gpu_enable_reduce_scatter_combine_by_dim=false"
    " --xla_disable_hlo_passes=rematerialization")


def get_platform():
    return Platform(name="gpu-8", chip="h100", devices=8, hosts=1,
                    mesh=MeshConfig(data=1, fsdp=8, tensor=1), micro_batch=16,
                    remat="dots", dtype="bfloat16",
                    env={"XLA_FLAGS": XLA_FLAGS})
