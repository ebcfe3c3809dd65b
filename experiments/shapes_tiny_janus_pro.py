"""The Janus-Pro family on the default run's data and budget: experiments/shapes_tiny.py with
the tiny Janus-Pro model (same LLM and SigLIP; images are 8x8 = 64 tokens of a tiny VQ
tokenizer predicted autoregressively, instead of 8x8 rectified-flow tokens).

`janusflow train --config experiments/shapes_tiny_janus_pro.py --workdir runs/shapes_tiny_janus_pro`
runs the same recipe (train/recipe.py) with one phase before it: "vq" trains the VQ tokenizer
on the shapes images (reconstruction + codebook + commitment losses), which then stays frozen.
Every later phase has the default run's steps, batches and learning rates, so the shapes
benchmark of the two families is at the same budget (the vq phase is extra). Sampling uses
Janus-Pro's official CFG weight 5 and temperature 1. Arg "quick": a few steps per phase.
"""

import dataclasses
import os

from janusflow.configs.loader import load_config
from janusflow.configs.presets import tiny_janus_pro
from janusflow.configs.schema import ConfigError, VQConfig

# 256 codes of 8 dims on 4x4-pixel patches (the preset's 64 leave too few for six colours x
# shape edges); 3 levels: 32 px -> 8x8 tokens, as JanusFlow's tiny generation grid.
VQ = VQConfig(codebook_size=256, embed_dim=8, z_channels=32, base_channels=32, channel_mult=(1, 1, 2),
              num_res_blocks=1, norm_groups=8)


def get_config(arg=None):
    if arg not in (None, "", "quick"):
        raise ConfigError(f"experiments/shapes_tiny_janus_pro.py: unknown arg {arg!r} (expected '' or 'quick')")
    base = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "shapes_tiny.py")
                       + (":quick" if arg == "quick" else ""))
    recipe = dataclasses.replace(base.recipe, cfg_weight=5.0, vq_steps=5 if arg == "quick" else 200,
                                 vq_batch=32, vq_lr=3e-3)
    # gen_codec is JanusFlow's (unused by this family): kept as the base's so the two differ only in the head
    model = tiny_janus_pro(vq=VQ, gen_codec=base.model.gen_codec)
    return dataclasses.replace(base, name="shapes_tiny_janus_pro", model=model, recipe=recipe)
