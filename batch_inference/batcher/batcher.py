"""batch-inference 1.0 import path: ``from batch_inference.batcher.batcher import Batcher``."""

from .base import Batcher

__all__ = ["Batcher"]
