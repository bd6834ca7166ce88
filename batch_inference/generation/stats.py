"""What a :class:`GenerationHost` counts, and the snapshot it hands out."""

from __future__ import annotations

import threading
from collections import Counter, deque
from dataclasses import dataclass, field

from ..stats import _WINDOW, Percentiles  # one window size for every host's percentiles

__all__ = ["GenerationStats"]


@dataclass(frozen=True)
class GenerationStats:
    """A snapshot of a generation host's activity since it was created.

    Attributes
    ----------
    requests:
        Requests accepted into the queue.
    completed, failed, timed_out, cancelled:
        Requests that ended with their completion, with an error, past their
        deadline, or cancelled by their caller (queued or mid-generation).
    generated_tokens:
        Tokens handed to callers.
    prefills, steps:
        ``model.prefill`` and ``model.step`` calls.
    running_sizes:
        ``{rows in the running batch: number of steps}``.
    active_s:
        Seconds the worker spent in ``prefill`` and ``step`` calls, their argmax
        included (the time :attr:`tokens_per_s` is over).
    time_to_first_token_s:
        From queueing to the request's first token.
    latency_s:
        From queueing to the request's last token (completed requests).
    queue_depth:
        Requests waiting at the time of the snapshot.
    """

    requests: int = 0
    completed: int = 0
    failed: int = 0
    timed_out: int = 0
    cancelled: int = 0
    generated_tokens: int = 0
    prefills: int = 0
    steps: int = 0
    running_sizes: dict[int, int] = field(default_factory=dict)
    active_s: float = 0.0
    time_to_first_token_s: Percentiles = field(default_factory=Percentiles)
    latency_s: Percentiles = field(default_factory=Percentiles)
    queue_depth: int = 0

    @property
    def model_calls(self) -> int:
        """``prefill`` plus ``step`` calls (batch-inference 1.0's "inference count")."""
        return self.prefills + self.steps

    @property
    def max_running(self) -> int:
        """The largest running batch a step decoded (0 before any step)."""
        return max(self.running_sizes, default=0)

    @property
    def mean_running(self) -> float:
        """Average rows per step (0.0 before any step)."""
        total = sum(self.running_sizes.values())
        return sum(k * v for k, v in self.running_sizes.items()) / total if total else 0.0

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second of :attr:`active_s` (0.0 before any)."""
        return self.generated_tokens / self.active_s if self.active_s > 0 else 0.0


class GenerationRecorder:
    """Thread-safe counters behind :class:`GenerationStats`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._running: Counter[int] = Counter()
        self._active_s = 0.0
        self._ttft: deque[float] = deque(maxlen=_WINDOW)
        self._latency: deque[float] = deque(maxlen=_WINDOW)

    def count(self, name: str, amount: int = 1) -> None:
        """Add ``amount`` to the counter ``name`` (a :class:`GenerationStats` field)."""
        with self._lock:
            self._counts[name] += amount

    def step(self, rows: int, tokens: int, elapsed_s: float) -> None:
        """One step over ``rows`` rows handed out ``tokens`` tokens in ``elapsed_s``."""
        with self._lock:
            self._counts["steps"] += 1
            self._counts["generated_tokens"] += tokens
            self._running[rows] += 1
            self._active_s += elapsed_s

    def prefill(self, tokens: int, elapsed_s: float) -> None:
        """One prefill handed out ``tokens`` first tokens in ``elapsed_s``."""
        with self._lock:
            self._counts["prefills"] += 1
            self._counts["generated_tokens"] += tokens
            self._active_s += elapsed_s

    def first_token(self, waited_s: float) -> None:
        with self._lock:
            self._ttft.append(waited_s)

    def finished(self, outcome: str, latency_s: float | None) -> None:
        """A request ended: ``outcome`` is ``completed``, ``failed``, ``timed_out``, ..."""
        with self._lock:
            self._counts[outcome] += 1
            if latency_s is not None:
                self._latency.append(latency_s)

    def snapshot(self, queue_depth: int) -> GenerationStats:
        with self._lock:
            c = self._counts
            return GenerationStats(
                requests=c["requests"],
                completed=c["completed"],
                failed=c["failed"],
                timed_out=c["timed_out"],
                cancelled=c["cancelled"],
                generated_tokens=c["generated_tokens"],
                prefills=c["prefills"],
                steps=c["steps"],
                running_sizes=dict(sorted(self._running.items())),
                active_s=self._active_s,
                time_to_first_token_s=Percentiles.of(self._ttft),
                latency_s=Percentiles.of(self._latency),
                queue_depth=queue_depth,
            )
