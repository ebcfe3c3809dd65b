"""Fine-tune on your own images (the path form of ``--config janusflow:finetune``; the config
lives in the package, janusflow/experiments/finetune.py, so a pip-installed user can name it)."""

from janusflow.experiments.finetune import get_config  # noqa: F401
