"""The scheduler: one per :meth:`ModelHost.start`, owning everything that start set running.

A :class:`Scheduler` owns its :class:`~batch_inference._queue.RequestQueue`,
its :class:`~batch_inference._worker.Worker` s (each with its prefetcher),
the :class:`~batch_inference._worker.Scatter` that answers callers, the
current :class:`~batch_inference.batcher.base.BatchLimits` (only ever
lowered, under a lock) and the broken state. Every thread it starts captures
this scheduler and nothing else, so a late event of an old start (a batch
still running after a ``stop()`` that timed out, a worker that dies late)
only ever touches its own queue and its own callers, never those of a later
start.

Thread ends: a worker's thread ends once its queue is closed and drained (or
it died); its prefetcher ends with it; the last worker to end closes the
scatter, which ends once it has answered what it holds. :meth:`stop` joins
all of them within its timeout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ._checks import remaining, timeout_message
from ._queue import RequestQueue
from ._request import Request, settle
from ._worker import Scatter, Worker
from .batcher.base import Batcher, BatchLimits
from .errors import HostBrokenError, HostStoppedError, RequestTimeoutError
from .stats import StatsRecorder

__all__ = ["Scheduler"]


class Scheduler:
    """The queue, workers and threads of one start of a host (see the module docstring).

    Parameters
    ----------
    replicas:
        ``(predict_batch, device)`` for each worker; ``device`` is ``None`` to
        leave the batched arguments where they are.
    batcher, stats, isolate_failures, output_device:
        The host's.
    limits:
        The limits to start with (a restart passes on the lowered ones).
    max_queue_size:
        For the queue; ``None``: unbounded.
    """

    def __init__(
        self,
        replicas: Sequence[tuple[Callable[..., Any], Any]],
        *,
        batcher: Batcher,
        limits: BatchLimits,
        stats: StatsRecorder,
        isolate_failures: bool,
        max_queue_size: int | None,
        output_device: Any = None,
    ) -> None:
        self.queue = RequestQueue(max_queue_size)
        self.broken: BaseException | None = None
        self._limits = limits
        self._limits_lock = threading.Lock()
        self._live_lock = threading.Lock()
        self._live_workers = len(replicas)
        self.scatter = Scatter(batcher, stats, self.fail)
        self.workers = [
            Worker(
                index, predict_batch, device,
                queue=self.queue, batcher=batcher, scatter=self.scatter, stats=stats,
                isolate_failures=isolate_failures, scheduler=self, output_device=output_device,
            )
            for index, (predict_batch, device) in enumerate(replicas)
        ]

    @property
    def threads(self) -> list[threading.Thread]:
        """Every thread this scheduler starts: model and prefetch threads, then the scatter."""
        return [t for worker in self.workers for t in worker.threads] + [self.scatter.thread]

    def start(self) -> None:
        self.scatter.thread.start()
        for worker in self.workers:
            worker.start()

    # ------------------------------------------------------------------ the workers' port
    def limits(self) -> BatchLimits:
        """The current limits (read without a lock: replaced whole, never changed in place)."""
        return self._limits

    def expire(self, request: Request) -> None:
        self.scatter.fail([request], RequestTimeoutError(timeout_message(request)), "timed_out")

    def lower_limit(self, failed_size: int) -> None:
        """After an out-of-memory error on ``failed_size`` requests, halve the limit."""
        with self._limits_lock:
            limits = self._limits
            new_size = max(1, min(limits.max_batch_size, failed_size // 2))
            if new_size < limits.max_batch_size:
                self._limits = BatchLimits(new_size, limits.max_batch_tokens,
                                           limits.max_delay_s, limits.full_batch_size)

    def fail(self, cause: BaseException, batch: list[Request]) -> None:
        """A thread died: fail its batch and every pending request; refuse new ones."""
        if self.broken is None:
            self.broken = cause
        error = HostBrokenError(f"a worker died: {type(cause).__name__}: {cause}")
        error.__cause__ = cause
        self.queue.close()
        settle([(r, error, True) for r in batch])
        self.fail_pending(error)

    def worker_finished(self) -> None:
        with self._live_lock:
            self._live_workers -= 1
            last = self._live_workers == 0
        if last:  # no worker can hand the scatter another batch
            self.scatter.close()

    # ------------------------------------------------------------------ the host's side
    def fail_pending(self, error: BaseException) -> None:
        """Answer every request that has not started with ``error``."""
        pending = [r for r in self.queue.drain() if r.future.set_running_or_notify_cancel()]
        if pending:
            self.scatter.fail(pending, error, "cancelled")

    def stop(self, cancel_pending: bool, timeout: float | None) -> bool:
        """Close the queue, optionally cancel what waits, and join every thread.

        Returns whether every thread this scheduler started has ended within
        ``timeout`` seconds (``None``: wait for them). Called from one of its
        own threads (``predict_batch``, or a future's callback, stopping its
        host), it joins nothing and answers ``False``: that thread goes on
        draining after this returns, and the others end after it.
        """
        self.queue.close()
        if cancel_pending:
            self.fail_pending(HostStoppedError("the host was stopped before this request ran"))
        threads = self.threads
        if threading.current_thread() in threads:
            return False  # its own thread: the others wait for it, so none can be joined here
        deadline_s = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            thread.join(remaining(deadline_s))
        return not any(thread.is_alive() for thread in threads)
