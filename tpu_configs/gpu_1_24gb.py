"""One GPU of 24 GB: NVIDIA L4 (24 GB; an RTX 4090 or A10 has the same memory). For fine-tuning (``janusflow:finetune``) on a single
accelerator: one device, micro-batch 4 (a larger batch becomes gradient accumulation),
remat per block, bf16 compute. Whether the 1.3B fits is ``janusflow plan``'s answer for the
optimizer and parameter dtype chosen (README "Fine-tune on your own images")."""

from janusflow.configs.schema import MeshConfig
from janusflow.perf.platforms import Platform


def get_platform():
    return Platform(name="gpu-1-24gb", chip="l4", devices=1, hosts=1, mesh=MeshConfig(data=1),
                    micro_batch=4, remat="block", dtype="bfloat16")
