"""REPA projector h_phi: the 3-layer MLP of the REPA paper (arXiv 2410.06940).

Linear D->H, SiLU, Linear H->H, SiLU, Linear H->out, applied per image token to the LLM hidden
states after block ``repa_layer``; its output is compared with SigLIP patch features by cosine.
It exists only for training: it is not in the released JanusFlow checkpoint.
"""

from __future__ import annotations

import jax
from flax import nnx

from janusflow.models.layers import Linear


class RepaProjector(nnx.Module):
    def __init__(self, in_dim: int, hidden: int, out_dim: int, *, rngs: nnx.Rngs, dtype=None):
        self.fc1 = Linear(in_dim, hidden, axes=("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.fc2 = Linear(hidden, hidden, axes=(None, "mlp"), rngs=rngs, dtype=dtype)
        self.fc3 = Linear(hidden, out_dim, axes=("mlp", "vit_embed"), rngs=rngs, dtype=dtype)

    def __call__(self, h):
        return self.fc3(jax.nn.silu(self.fc2(jax.nn.silu(self.fc1(h)))))
