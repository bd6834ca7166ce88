"""Batched generation (greedy or sampled): continuous batching, streaming, a step-wise protocol.

``GenerationHost(model)`` serves a Hugging Face causal LM (or any
:class:`StepModel`) to many callers: ``host.generate(prompt_ids)``,
``await host.generate_async(...)``, or ``host.stream(...)`` to receive tokens
as they come. transformers is imported only when a Hugging Face model is
wrapped (:mod:`batch_inference.generation.hf`).
"""

from .host import GenerationHost
from .protocol import RunningBatch, StepModel
from .stats import GenerationStats
from .stream import TokenStream

__all__ = ["GenerationHost", "GenerationStats", "RunningBatch", "StepModel", "TokenStream"]
