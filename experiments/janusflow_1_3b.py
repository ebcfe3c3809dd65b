"""JanusFlow-1.3B at 384 px: the official architecture (paper section 4.1).

Training stages (paper Table 1) are added as variants by the training-run issue; for now the
arg selects only the model. Usage: janusflow info --config experiments/janusflow_1_3b.py
"""

from janusflow.config import ExperimentConfig
from janusflow.presets import janusflow_1_3b


def get_config(arg=None):
    return ExperimentConfig(name="janusflow_1_3b", model=janusflow_1_3b(), seq_len=4096)
