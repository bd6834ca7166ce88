"""The scheduler: one per :meth:`ModelHost.start`, owning everything that start set running.

It is the only door for requests: :meth:`ModelHost.predict`, ``submit`` and
``predict_async`` hand it a checked :class:`~batch_inference._request.Request`
and it queues it and waits for the outcome (:meth:`Scheduler.predict`,
:meth:`Scheduler.submit`, :meth:`Scheduler.predict_async`); a caller that
gives up has its request removed from this scheduler's queue (or its
prefetcher's hold), never from a later start's.

A :class:`Scheduler` owns its :class:`~batch_inference._queue.RequestQueue`,
its :class:`~batch_inference._worker.Worker` s (each with its prefetcher),
the :class:`~batch_inference._worker.Scatter` that answers callers, the
current :class:`~batch_inference.batcher.base.BatchLimits` (only ever
lowered, under a lock) and the broken state. Every thread it starts captures
this scheduler and nothing else, so a late event of an old start (a batch
still running after a ``stop()`` that timed out, a worker that dies late)
only ever touches its own queue and its own callers, never those of a later
start.

Thread ends: a worker's model thread ends once its queue is closed and
drained (or it died); its prefetch thread ends with it, once it has answered
the batches handed to it. :meth:`stop` joins all of them within its timeout.

The path of one request: the caller's thread checks it and puts it on the
queue; the model thread takes it (idle model), or the prefetch thread takes
it ahead with a full batch and prepares it (busy model); the model thread
runs it; the model thread answers it (nothing prepared to run next), or hands
it to the prefetch thread, which answers it while the next batch runs; the
caller wakes.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from typing import Any

from ._checks import FOREVER, loop_deadline, remaining
from ._future import timed_out, wait_async, wait_blocking
from ._queue import RequestQueue
from ._request import Request, settle
from ._worker import Scatter, Worker
from .batcher.base import Batcher, BatchLimits
from .errors import (
    HostBrokenError,
    HostNotRunningError,
    HostStoppedError,
    QueueFullError,
)
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
        self._stats = stats
        self._limits = limits
        self._limits_lock = threading.Lock()
        self.scatter = Scatter(batcher, stats)
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
        """Every thread this scheduler starts: each worker's model and prefetch threads."""
        return [t for worker in self.workers for t in worker.threads]

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    # ------------------------------------------------------------------ the workers' port
    def limits(self) -> BatchLimits:
        """The current limits (read without a lock: replaced whole, never changed in place)."""
        return self._limits

    def expire(self, request: Request) -> None:
        self.scatter.fail([request], timed_out(request.enqueued_s), "timed_out")

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

    # ------------------------------------------------------------------ the host's side
    def fail_pending(self, error: BaseException) -> None:
        """Answer every request that has not started with ``error``."""
        waiting = self.queue.drain()
        for worker in self.workers:
            waiting += worker.prefetcher.drain()
        pending = [r for r in waiting if r.future.set_running_or_notify_cancel()]
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

    # ------------------------------------------------------------------ the door
    def submit(self, request: Request, wait_for_queue: bool) -> Future[Any]:
        """Queue ``request`` (its future a ``concurrent.futures.Future``) and return its future.

        Cancelling the future before the batch starts removes the request.
        """
        self.put(request, wait_for_queue)
        future = request.future
        future.add_done_callback(lambda f: self._on_cancel(f, request))
        return future

    def predict(self, request: Request, wait_for_queue: bool) -> Any:
        """Queue ``request`` (its future a blocking LightFuture) and block for its outcome."""
        self.put(request, wait_for_queue)
        return wait_blocking(request.future, request.deadline_s, self.abandon, request,
                             request.enqueued_s)

    def predict_async(self, request: Request, wait_for_queue: bool) -> Awaitable[Any]:
        """Queue ``request`` (its future a LightFuture of the running loop); await the result.

        Without ``wait_for_queue`` the request is queued (or refused) at once
        and the wait is returned as it is: one coroutine less per call.
        """
        if wait_for_queue:
            return self._put_async_and_wait(request)
        self.put(request, False)
        return wait_async(request.future, request.deadline_s, self.abandon, request,
                          request.enqueued_s)

    async def _put_async_and_wait(self, request: Request) -> Any:
        await self._put_async(request)
        return await wait_async(request.future, request.deadline_s, self.abandon, request,
                                request.enqueued_s)

    def put(self, request: Request, wait_for_queue: bool) -> None:
        """Queue ``request``; with ``wait_for_queue``, wait for room until its deadline."""
        until_s = None
        if wait_for_queue:
            until_s = FOREVER if request.deadline_s is None else request.deadline_s
        try:
            self.queue.put(request, until_s)
        except HostNotRunningError:
            self._raise_if_broken()
            raise

    async def _put_async(self, request: Request) -> None:
        """``put(request, wait_for_queue=True)`` for asyncio callers: waits without a thread."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                room = self.queue.put_or_wait(request, loop)
            except HostNotRunningError:
                self._raise_if_broken()
                raise
            if room is None:
                return
            try:
                async with asyncio.timeout_at(loop_deadline(loop, request.deadline_s)):
                    await room
            except BaseException as error:
                self.queue.forget_space_waiter(room)
                if isinstance(error, TimeoutError):
                    raise QueueFullError(
                        f"the queue still held max_queue_size={self.queue.max_size} requests "
                        "when this request's timeout ran out"
                    ) from None
                raise

    def abandon(self, request: Request, reason: str) -> bool:
        """Its caller gave up (``reason``: "timed_out" or "cancelled"): drop it if not started.

        Returns ``True``: the caller stops waiting either way (a started request
        runs on, and its outcome is dropped).
        """
        if request.future.cancel():
            self.discard(request)
            self._stats.count(reason)
        elif reason == "timed_out":
            self._stats.count(reason)
        return True

    def discard(self, request: Request) -> None:
        """Remove a cancelled request from the queue, or from the prefetcher that holds it."""
        if not self.queue.discard(request):
            for worker in self.workers:
                if worker.prefetcher.discard(request):
                    return

    def _on_cancel(self, future: Future[Any], request: Request) -> None:
        if future.cancelled():
            self.discard(request)
            self._stats.count("cancelled")

    def _raise_if_broken(self) -> None:
        if self.broken is not None:
            raise HostBrokenError("the host is broken: a worker died") from self.broken
