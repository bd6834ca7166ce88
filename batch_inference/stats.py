"""Counters and distributions a host keeps, and the snapshot it hands out."""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

__all__ = ["BatchFigures", "HostStats", "Percentiles"]

_WINDOW = 10_000


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



class StatsRecorder:
    """Thread-safe accumulation behind :meth:`ModelHost.stats`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._batch_sizes: Counter[int] = Counter()
        self._queue_wait: deque[float] = deque(maxlen=_WINDOW)
        self._model_time: deque[float] = deque(maxlen=_WINDOW)
        self._model_busy_s = 0.0

    def batch(
        self, size: int, real: int, padded: int, waits: Iterable[float], model_s: float,
        retry: bool,
    ) -> None:
        with self._lock:
            self._batch_sizes[size] += 1
            counts = self._counts
            counts["batches"] += 1
            counts["retries"] += retry
            counts["real_tokens"] += real
            counts["padded_tokens"] += padded
            self._queue_wait.extend(waits)
            self._model_time.append(model_s)
            self._model_busy_s += model_s

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def snapshot(self, requests: int, queue_depth: int) -> HostStats:
        with self._lock:
            c = self._counts
            return HostStats(
                requests=requests,
                completed=c["completed"],
                failed=c["failed"],
                timed_out=c["timed_out"],
                cancelled=c["cancelled"],
                batches=c["batches"],
                retries=c["retries"],
                batch_sizes=dict(sorted(self._batch_sizes.items())),
                real_tokens=c["real_tokens"],
                padded_tokens=c["padded_tokens"],
                queue_wait_s=Percentiles.of(self._queue_wait),
                model_time_s=Percentiles.of(self._model_time),
                model_busy_s=self._model_busy_s,
                queue_depth=queue_depth,
            )
