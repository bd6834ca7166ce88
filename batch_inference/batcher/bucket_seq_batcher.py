"""Group sequences into length buckets; pad only within a bucket."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigurationError
from .base import RequestInfo
from .seq_batcher import SeqBatcher

__all__ = ["BucketSeqBatcher"]


class BucketSeqBatcher(SeqBatcher):
    """A :class:`SeqBatcher` that never batches requests of different length buckets.

    ``buckets=[16, 32, 64]`` means the buckets [1, 16], [17, 32], [33, 64] and
    [65, ...). The host gathers each bucket on its own: a batch holds requests
    of one bucket only (up to ``max_batch_size`` of them) and is padded to that
    batch's longest request.

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
