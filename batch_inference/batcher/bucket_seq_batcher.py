"""Group sequences into length buckets; pad only within a bucket."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigurationError, OutputMismatchError
from .base import RequestInfo
from .multi_batcher import MultiBatcher
from .seq_batcher import SeqBatcher

__all__ = ["BucketSeqBatcher"]


class BucketSeqBatcher(SeqBatcher, MultiBatcher):
    """A :class:`SeqBatcher` that never batches requests of different length buckets.

    ``buckets=[16, 32, 64]`` means the buckets [1, 16], [17, 32], [33, 64] and
    [65, ...). The host gathers each bucket on its own: a batch holds requests
    of one bucket only (up to ``max_batch_size`` of them) and is padded to that
    batch's longest request.

    It is a :class:`~batch_inference.batcher.multi_batcher.MultiBatcher`, as in
    batch-inference 1.0: :meth:`batch` returns a list with one batched request
    per bucket present (shortest bucket first), ``predict_batch`` runs once for
    each, and :meth:`unbatch` takes the list of outputs. In the host every
    batch holds one bucket, so the list has one entry and the model one call.

    Parameters
    ----------
    padding_tokens, tensor, max_length, output_seq_dim, dtypes, pad_to_multiple_of:
        As for :class:`SeqBatcher` (buckets hold requests by their own length;
        ``pad_to_multiple_of`` rounds only the padded length of a batch).
    buckets:
        Upper bounds of the buckets, strictly increasing positive integers.
    """

    def __init__(
        self,
        padding_tokens: Sequence[Any],
        buckets: Sequence[int] = (16, 32, 64),
        tensor: str | None = None,
        max_length: int | None = None,
        output_seq_dim: int | None = 1,
        *,
        dtypes: Sequence[Any] | None = None,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        super().__init__(padding_tokens, tensor, max_length, output_seq_dim, dtypes=dtypes,
                         pad_to_multiple_of=pad_to_multiple_of)
        bounds = list(buckets)
        if not bounds or any(not isinstance(b, int) or b < 1 for b in bounds):
            raise ConfigurationError(f"buckets must be positive integers, got {buckets!r}")
        if any(a >= b for a, b in zip(bounds, bounds[1:])):
            raise ConfigurationError(f"buckets must be strictly increasing, got {buckets!r}")
        self.buckets = bounds

    def bucket_of(self, length: int) -> int:
        """Index of the bucket holding ``length`` (``len(buckets)`` for the open one)."""
        return bisect_left(self.buckets, length)

    def inspect(self, args: tuple[Any, ...]) -> RequestInfo:
        info = super().inspect(args)
        return RequestInfo(info.length, info.rows, (info.key, self.bucket_of(info.length)))

    def _bucket_of_request(self, request: tuple[Any, ...]) -> int:
        return self.bucket_of(self._length(request))

    def batch(  # type: ignore[override]
        self, requests: Sequence[tuple[Any, ...]]
    ) -> tuple[list[tuple[Any, ...]], Any]:
        """Pad and concatenate the requests of each bucket: one batched request per bucket.

        Returns
        -------
        batched, context
            ``batched`` lists one tuple of arguments per bucket present, shortest
            bucket first; ``context`` is handed to :meth:`unbatch`.
        """
        buckets = [self._bucket_of_request(request) for request in requests]
        if min(buckets) == max(buckets):  # the host's case: one bucket, one call
            groups = [list(range(len(requests)))]
        else:
            by_bucket: dict[int, list[int]] = {}
            for index, bucket in enumerate(buckets):
                by_bucket.setdefault(bucket, []).append(index)
            groups = [by_bucket[bucket] for bucket in sorted(by_bucket)]
        batched: list[tuple[Any, ...]] = []
        contexts: list[tuple[list[int], Any]] = []
        for indices in groups:
            args, context = SeqBatcher.batch(self, [requests[i] for i in indices])
            batched.append(args)
            contexts.append((indices, context))
        return batched, contexts

    def unbatch(self, outputs: Any, context: Any) -> list[Any]:
        """One result per request, in request order, from the list of per-bucket outputs."""
        if not isinstance(outputs, (list, tuple)) or len(outputs) != len(context):
            got = (f"a {type(outputs).__name__} of {len(outputs)}"
                   if isinstance(outputs, (list, tuple)) else f"a {type(outputs).__name__}")
            raise OutputMismatchError(
                f"BucketSeqBatcher.unbatch expects a list of {len(context)} outputs (one per "
                f"batched request of batch()), got {got}"
            )
        results: list[Any] = [None] * sum(len(indices) for indices, _ in context)
        for output, (indices, group_context) in zip(outputs, context):
            for index, result in zip(indices, SeqBatcher.unbatch(self, output, group_context)):
                results[index] = result
        return results
