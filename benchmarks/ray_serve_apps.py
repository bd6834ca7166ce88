"""The deployments of the Ray Serve page that are not the library's: Ray's own batching, an echo.

Imported inside the page's namespace only (``benchmarks.ray_serve_bench``):
it imports Ray at import time. ``ServeBatchEmbedder`` and
``ServeBatchAccelerator`` are written as Ray's batching guide writes a
deployment: one ``@serve.batch`` method that takes a list and returns a list.
A list of variable-length queries has to be padded by hand, to the longest of
the batch, and each answer trimmed back to its query's length: that is what
the handler does (``@serve.batch`` knows no lengths). Each also counts its
batch sizes and tokens, for the page's table. ``Echo`` returns its argument:
Ray's own handle round trip, the floor for a lone request.
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np
from ray import serve

from benchmarks._accelerator_harness import SimulatedAccelerator
from benchmarks.bert import BertEmbedding, load_bert

__all__ = ["MAX_BATCH_SIZE", "Echo", "MiniLMEmbedding", "ServeBatchAccelerator",
           "ServeBatchEmbedder", "replica_id", "serve_batch_deployment"]

#: ``@serve.batch``'s ``max_batch_size`` here; the page gives the library's deployment the same.
MAX_BATCH_SIZE = 32
#: ``@serve.batch``'s ``batch_wait_timeout_s`` here (Ray's default); the page gives the
#: library's deployments the same ``max_delay_s``.
BATCH_WAIT_S = 0.01


def replica_id() -> str:
    return serve.get_replica_context().replica_id.unique_id


class MiniLMEmbedding(BertEmbedding):
    """:class:`~benchmarks.bert.BertEmbedding` of ``load_bert(name)`` (MiniLM:
    the real weights), loaded where it is built (in a replica)."""

    def __init__(self, name: str = "minilm", device: str = "cpu") -> None:
        super().__init__(load_bert(name, device).model, device)


class _Counted:
    """Batch sizes and tokens of a ``@serve.batch`` handler, as the host's stats count them."""

    def __init__(self) -> None:
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        self.real_tokens = 0
        self.padded_tokens = 0

    def figures(self) -> tuple[str, dict[str, Any]]:
        return replica_id(), {"batch_sizes": dict(self.batch_sizes),
                              "real_tokens": self.real_tokens,
                              "padded_tokens": self.padded_tokens}


class ServeBatchEmbedder(_Counted):
    """MiniLM behind ``@serve.batch``: pad the list to its longest query, run, trim back."""

    def __init__(self, name: str = "minilm", device: str = "cpu") -> None:
        super().__init__()
        self.model = MiniLMEmbedding(name, device)

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S)
    async def __call__(self, input_ids: list[Any], attention_mask: list[Any]) -> list[Any]:
        import torch

        lengths = [ids.shape[1] for ids in input_ids]
        longest = max(lengths)
        ids = torch.zeros(len(lengths), longest, dtype=input_ids[0].dtype)
        mask = torch.zeros(len(lengths), longest, dtype=attention_mask[0].dtype)
        for row, (one_ids, one_mask) in enumerate(zip(input_ids, attention_mask)):
            ids[row, : lengths[row]] = one_ids[0]
            mask[row, : lengths[row]] = one_mask[0]
        self.batch_sizes[len(lengths)] += 1
        self.real_tokens += sum(lengths)
        self.padded_tokens += len(lengths) * longest
        output = self.model.predict_batch(ids, mask)
        return [output[row : row + 1, :length] for row, length in enumerate(lengths)]


class ServeBatchAccelerator(_Counted):
    """The simulated accelerator behind ``@serve.batch``: concatenate rows, run, split."""

    def __init__(self, base_s: float, per_row_s: float) -> None:
        super().__init__()
        self.model = SimulatedAccelerator(base_s, per_row_s)

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S)
    async def __call__(self, rows: list[np.ndarray]) -> list[np.ndarray]:
        self.batch_sizes[len(rows)] += 1
        self.real_tokens += len(rows)
        self.padded_tokens += len(rows)
        output = self.model.predict_batch(np.concatenate(rows))
        return [output[i : i + 1] for i in range(len(rows))]


class Echo:
    """Returns its argument: Ray Serve's own handle round trip."""

    async def __call__(self, x: Any) -> Any:
        return x


def serve_batch_deployment(cls: type, name: str, max_ongoing_requests: int | None,
                           num_replicas: int = 1, ray_actor_options: dict | None = None) -> Any:
    """``cls`` as a Serve deployment; ``max_ongoing_requests=None`` keeps Serve's default (5)."""
    options: dict[str, Any] = {"name": name, "num_replicas": num_replicas,
                               "ray_actor_options": ray_actor_options or {}}
    if max_ongoing_requests is not None:
        options["max_ongoing_requests"] = max_ongoing_requests
    return serve.deployment(cls, **options)
