"""Sampling: rectified-flow text-to-image generation and image understanding (chat)."""

from janusflow.sample.chat import UnderstandingTemplate, answer
from janusflow.sample.generate import generate, iter_generate

__all__ = ["generate", "iter_generate", "answer", "UnderstandingTemplate"]
