"""Counters and distributions a host keeps, and the snapshot it hands out."""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from .batcher.base import START_REASONS

__all__ = ["BATCH_REASONS", "BatchFigures", "Histogram", "HostStats", "Percentiles"]

_WINDOW = 10_000
#: Why a ``predict_batch`` call was made: a batch's start reason, or ``"retry"``
#: (a part of a failed batch, re-run to isolate the failing request).
BATCH_REASONS: tuple[str, ...] = (*START_REASONS, "retry")
#: Upper bounds (seconds) of the queue-wait and model-time histogram buckets.
TIME_BUCKETS_S: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
#: Upper bounds of the per-batch padded-token histogram buckets (powers of two).
TOKEN_BUCKETS: tuple[float, ...] = tuple(float(2**i) for i in range(21))
#: Upper bounds of the per-batch padding-efficiency histogram buckets.
EFFICIENCY_BUCKETS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


@dataclass(frozen=True)
class Percentiles:
    """Percentiles (seconds) over the most recent samples (up to 10,000)."""

    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0
    max: float = 0.0
    count: int = 0

    @classmethod
    def of(cls, samples: Iterable[float]) -> Percentiles:
        values = np.fromiter(samples, dtype=float)
        if values.size == 0:
            return cls()
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        return cls(float(p50), float(p90), float(p99), float(values.max()), int(values.size))


@dataclass(frozen=True)
class Histogram:
    """Every sample since the host was created, counted in fixed buckets (Prometheus' way).

    ``cumulative[i]`` counts the samples ``<= bounds[i]``; ``count`` counts
    them all (the ``+Inf`` bucket) and ``sum`` adds them up.
    """

    bounds: tuple[float, ...] = ()
    cumulative: tuple[int, ...] = ()
    count: int = 0
    sum: float = 0.0

    @classmethod
    def empty(cls, bounds: tuple[float, ...]) -> Histogram:
        return cls(bounds, (0,) * len(bounds))


class _Buckets:
    """A histogram being recorded: one integer add per sample (the caller holds a lock)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket (not cumulative); the last: +Inf
        self.sum = 0.0

    def add(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> Histogram:
        running, cumulative = 0, []
        for n in self.counts[:-1]:
            running += n
            cumulative.append(running)
        return Histogram(self.bounds, tuple(cumulative), running + self.counts[-1], self.sum)


class BatchFigures:
    """Figures derived from ``batch_sizes``, ``real_tokens`` and ``padded_tokens``."""

    batch_sizes: dict[int, int]
    real_tokens: int
    padded_tokens: int

    @property
    def mean_batch_size(self) -> float:
        """Average requests per ``predict_batch`` call (0.0 without batches)."""
        total = sum(self.batch_sizes.values())
        return sum(k * v for k, v in self.batch_sizes.items()) / total if total else 0.0

    @property
    def padding_efficiency(self) -> float:
        """Real tokens / padded tokens (1.0 means no padding was computed)."""
        return self.real_tokens / self.padded_tokens if self.padded_tokens else 1.0


@dataclass(frozen=True)
class HostStats(BatchFigures):
    """A snapshot of a host's activity since it was created.

    Attributes
    ----------
    requests:
        Requests accepted into the queue.
    completed, failed, timed_out, cancelled:
        Requests that ended with a result, with an exception, past their
        deadline, or cancelled before they ran.
    batches:
        ``predict_batch`` calls (failure-isolation retries included).
    retries:
        ``predict_batch`` calls made to isolate a failing request.
    batch_sizes:
        ``{batch size: number of batches}``.
    batch_sizes_by_reason:
        ``{reason: {batch size: number of batches}}``: the same batches by why
        they started (:data:`BATCH_REASONS`; see
        :class:`~batch_inference.batcher.base.Selection`). Every reason is a key.
    real_tokens, padded_tokens:
        Tokens of the requests, and tokens the model computed (with padding).
    queue_wait_s:
        Time from queueing to the start of the request's batch.
    model_time_s:
        Time of each ``predict_batch`` call.
    model_busy_s:
        Total seconds spent in ``predict_batch`` calls (all workers together);
        over a run's wall time, how busy the model was.
    queue_depth:
        Requests waiting at the time of the snapshot.
    batch_limit:
        The host's current ``max_batch_size`` (lowered after out-of-memory errors).
    queue_wait_buckets_s, model_time_buckets_s:
        ``queue_wait_s`` and ``model_time_s`` over every sample since the host
        was created, in the buckets of ``TIME_BUCKETS_S`` (for Prometheus).
    padding_efficiency_buckets:
        Each batch's real / padded tokens, in the buckets of ``EFFICIENCY_BUCKETS``.
    batch_tokens_buckets:
        Each batch's padded tokens, in the buckets of ``TOKEN_BUCKETS``.
    """

    requests: int = 0
    completed: int = 0
    failed: int = 0
    timed_out: int = 0
    cancelled: int = 0
    batches: int = 0
    retries: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)
    real_tokens: int = 0
    padded_tokens: int = 0
    queue_wait_s: Percentiles = Percentiles()
    model_time_s: Percentiles = Percentiles()
    model_busy_s: float = 0.0
    queue_depth: int = 0
    batch_limit: int = 0
    batch_sizes_by_reason: dict[str, dict[int, int]] = field(
        default_factory=lambda: {reason: {} for reason in BATCH_REASONS})
    queue_wait_buckets_s: Histogram = Histogram.empty(TIME_BUCKETS_S)
    model_time_buckets_s: Histogram = Histogram.empty(TIME_BUCKETS_S)
    padding_efficiency_buckets: Histogram = Histogram.empty(EFFICIENCY_BUCKETS)
    batch_tokens_buckets: Histogram = Histogram.empty(TOKEN_BUCKETS)

    @property
    def batches_by_reason(self) -> dict[str, int]:
        """``{reason: number of batches}`` (see ``batch_sizes_by_reason``)."""
        return {reason: sum(sizes.values()) for reason, sizes in self.batch_sizes_by_reason.items()}


class StatsRecorder:
    """Thread-safe accumulation behind :meth:`ModelHost.stats`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._sizes_by_reason: dict[str, Counter[int]] = {r: Counter() for r in BATCH_REASONS}
        self._queue_wait: deque[float] = deque(maxlen=_WINDOW)
        self._model_time: deque[float] = deque(maxlen=_WINDOW)
        self._model_busy_s = 0.0
        self._wait_buckets = _Buckets(TIME_BUCKETS_S)
        self._model_buckets = _Buckets(TIME_BUCKETS_S)
        self._efficiency_buckets = _Buckets(EFFICIENCY_BUCKETS)
        self._token_buckets = _Buckets(TOKEN_BUCKETS)

    def batch(
        self, size: int, real: int, padded: int, waits: Iterable[float], model_s: float,
        retry: bool, reason: str = "model_idle",
    ) -> None:
        """Record one ``predict_batch`` call; ``reason`` is why it started (``retry`` wins)."""
        with self._lock:
            sizes = self._sizes_by_reason.get("retry" if retry else reason)
            if sizes is None:  # a batcher's own reason: kept, exported as it is
                sizes = self._sizes_by_reason[reason] = Counter()
            sizes[size] += 1
            counts = self._counts
            counts["batches"] += 1
            counts["retries"] += retry
            counts["real_tokens"] += real
            counts["padded_tokens"] += padded
            if waits:
                if not isinstance(waits, (list, tuple)):
                    waits = list(waits)
                self._queue_wait.extend(waits)
                add = self._wait_buckets.add
                for wait_s in waits:
                    add(wait_s)
            self._model_time.append(model_s)
            self._model_busy_s += model_s
            self._model_buckets.add(model_s)
            self._efficiency_buckets.add(real / padded if padded else 1.0)
            self._token_buckets.add(padded)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def snapshot(self, requests: int, queue_depth: int, batch_limit: int = 0) -> HostStats:
        with self._lock:
            c = self._counts
            by_reason = {r: dict(sorted(n.items())) for r, n in self._sizes_by_reason.items()}
            batch_sizes: Counter[int] = Counter()
            for sizes in self._sizes_by_reason.values():
                batch_sizes.update(sizes)
            return HostStats(
                requests=requests,
                completed=c["completed"],
                failed=c["failed"],
                timed_out=c["timed_out"],
                cancelled=c["cancelled"],
                batches=c["batches"],
                retries=c["retries"],
                batch_sizes=dict(sorted(batch_sizes.items())),
                real_tokens=c["real_tokens"],
                padded_tokens=c["padded_tokens"],
                queue_wait_s=Percentiles.of(self._queue_wait),
                model_time_s=Percentiles.of(self._model_time),
                model_busy_s=self._model_busy_s,
                queue_depth=queue_depth,
                batch_limit=batch_limit,
                batch_sizes_by_reason=by_reason,
                queue_wait_buckets_s=self._wait_buckets.snapshot(),
                model_time_buckets_s=self._model_buckets.snapshot(),
                padding_efficiency_buckets=self._efficiency_buckets.snapshot(),
                batch_tokens_buckets=self._token_buckets.snapshot(),
            )
