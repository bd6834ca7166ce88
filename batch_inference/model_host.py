"""batch-inference 1.0 import path: ``from batch_inference.model_host import ModelHost``."""

from .host import ModelHost

__all__ = ["ModelHost"]
