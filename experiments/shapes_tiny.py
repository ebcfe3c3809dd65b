"""The default experiment: a tiny JanusFlow on the built-in shapes dataset, on CPU.

Usage: janusflow info --config experiments/shapes_tiny.py
"""

from janusflow.config import ExperimentConfig
from janusflow.presets import tiny


def get_config(arg=None):
    return ExperimentConfig(name="shapes_tiny", model=tiny(), seq_len=256)
