"""batch-inference 1.0's asyncio host: ``from batch_inference.aio import ModelHost``."""

from .model_host import ModelHost

__all__ = ["ModelHost"]
