"""The request fronts of :class:`~batch_inference.host.ModelHost`: predict, predict_async, submit.

All three make a checked :class:`~batch_inference._request.Request` and put
it on the host's one queue; they differ only in how the caller waits for the
outcome (blocking on a lock, awaiting an asyncio future, or holding a
``concurrent.futures.Future``). It reads the host's settings and its current
:class:`~batch_inference._scheduler.Scheduler` (one read per call); a request
that gives up later is removed from the queue it was put in, never from a
later start's.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ._checks import checked_timeout, loop_deadline, remaining, timeout_message
from ._queue import _FOREVER, RequestQueue
from ._request import Request, RequestKind
from ._scheduler import Scheduler
from .batcher.base import Batcher
from .errors import (
    HostBrokenError,
    HostNotRunningError,
    InvalidRequestError,
    QueueFullError,
    RequestTimeoutError,
)
from .stats import StatsRecorder

__all__ = ["RequestFronts"]


class RequestFronts:
    """How callers hand requests to a :class:`~batch_inference.host.ModelHost`."""

    # Set by ModelHost.__init__ / start():
    batcher: Batcher
    default_timeout_s: float | None
    max_queue_size: int | None
    _arg_range: tuple[int, float]
    _scheduler: Scheduler | None
    _stats: StatsRecorder

    def _make_request(
        self,
        args: tuple[Any, ...],
        timeout: float | None,
        loop: asyncio.AbstractEventLoop | None,
        kind: RequestKind = "future",
    ) -> Request:
        """A checked request; ``kind`` chooses its future (see :class:`Request`)."""
        low, high = self._arg_range
        if not low <= len(args) <= high:
            if high == float("inf"):
                expected = f"at least {low}"
            else:
                expected = str(low) if low == high else f"{low} to {int(high)}"
            raise InvalidRequestError(
                f"predict_batch takes {expected} arguments, got {len(args)}"
            )
        info = self.batcher.inspect(args)
        if timeout is None:
            timeout = self.default_timeout_s
        elif type(timeout) is not float or not 0.0 < timeout < _FOREVER:
            timeout = checked_timeout(timeout)  # an int, inf (no deadline), or refused
        now_s = time.monotonic()
        request = Request(args, info, now_s, None if timeout is None else now_s + timeout, kind)
        if loop is not None:
            request.loop = loop
            request.loop_future = loop.create_future()
        return request

    def submit(self, *args: Any, timeout: float | None = None, wait_for_queue: bool = False):
        """Queue one request and return its :class:`concurrent.futures.Future`.

        The future's result is what :meth:`predict` returns. Cancelling it
        before its batch starts removes the request from the queue (it is
        never run); ``cancel()`` returns ``False`` once its batch has started.
        A request whose ``timeout`` (or ``default_timeout_s``) passes before its
        batch starts is not run: its future gets
        :class:`~batch_inference.errors.RequestTimeoutError` when a worker
        reaches it. To stop waiting at the deadline itself, wait with
        ``future.result(timeout)`` and ``cancel()`` (or use :meth:`predict`).
        """
        request = self._make_request(args, timeout, None)
        queue = self._put(request, wait_for_queue)
        request.future.add_done_callback(lambda future: self._on_cancel(future, queue, request))
        return request.future

    def _on_cancel(self, future: Any, queue: RequestQueue, request: Request) -> None:
        if future.cancelled():
            queue.discard(request)
            self._stats.count("cancelled")

    def _put(self, request: Request, wait_for_queue: bool) -> RequestQueue:
        """Queue ``request`` on the current start's queue, and return that queue."""
        scheduler = self._scheduler
        if scheduler is None:
            raise _never_started()
        until_s = request.deadline_s if wait_for_queue else None
        if wait_for_queue and until_s is None:
            until_s = _FOREVER
        queue = scheduler.queue
        try:
            queue.put(request, until_s)
        except HostNotRunningError:
            _raise_if_broken(scheduler)
            raise
        return queue

    async def _put_async(
        self, request: Request, loop: asyncio.AbstractEventLoop
    ) -> RequestQueue:
        """``_put(request, wait_for_queue=True)`` for asyncio callers: waits without a thread."""
        scheduler = self._scheduler
        if scheduler is None:
            raise _never_started()
        queue = scheduler.queue
        while True:
            try:
                room = queue.put_or_wait(request, loop)
            except HostNotRunningError:
                _raise_if_broken(scheduler)
                raise
            if room is None:
                return queue
            try:
                async with asyncio.timeout_at(loop_deadline(loop, request.deadline_s)):
                    await room
            except BaseException as error:
                queue.forget_space_waiter(room)
                if isinstance(error, TimeoutError):
                    raise QueueFullError(
                        f"the queue still held max_queue_size={self.max_queue_size} requests "
                        "when this request's timeout ran out"
                    ) from None
                raise

    def predict(
        self, *args: Any, timeout: float | None = None, wait_for_queue: bool = False
    ) -> Any:
        """Run one request through the model, batched with others; block for its result.

        Parameters
        ----------
        *args:
            The request: one value per argument of ``predict_batch``.
        timeout:
            Seconds to wait at most (default: the host's ``default_timeout_s``);
            then :class:`~batch_inference.errors.RequestTimeoutError` is raised
            and the request is removed if it has not started.
        wait_for_queue:
            With a full queue, wait for room (within ``timeout``) instead of
            raising :class:`~batch_inference.errors.QueueFullError` at once.
        """
        request = self._make_request(args, timeout, None, "thread")
        queue = self._put(request, wait_for_queue)
        future = request.future
        try:
            return future.result(remaining(request.deadline_s))
        except TimeoutError:
            if future.done():
                return future.result()  # its own outcome (maybe a RequestTimeoutError)
            self._abandon(queue, request, "timed_out")
            raise RequestTimeoutError(timeout_message(request)) from None
        except BaseException:
            self._abandon(queue, request, "cancelled")
            raise

    async def predict_async(
        self, *args: Any, timeout: float | None = None, wait_for_queue: bool = False
    ) -> Any:
        """Awaitable :meth:`predict` for asyncio callers; never blocks the event loop.

        Cancelling the awaiting task removes the request if it has not started.
        """
        loop = asyncio.get_running_loop()
        request = self._make_request(args, timeout, loop, "loop")
        if wait_for_queue:
            queue = await self._put_async(request, loop)
        else:
            queue = self._put(request, False)
        loop_future = request.loop_future
        assert loop_future is not None
        try:
            if request.deadline_s is None:  # no timeout context: it costs a few microseconds
                return await loop_future
            async with asyncio.timeout_at(loop_deadline(loop, request.deadline_s)):
                return await loop_future
        except TimeoutError as error:
            if loop_future.cancelled() or not loop_future.done():  # the deadline passed
                self._abandon(queue, request, "timed_out")
                raise RequestTimeoutError(timeout_message(request)) from None
            if loop_future.exception() is error:
                raise  # the request's own outcome (a TimeoutError of the model, or expiry)
        except asyncio.CancelledError:
            self._abandon(queue, request, "cancelled")
            raise
        # The deadline fired just as the outcome arrived: the caller gets the outcome.
        return loop_future.result()

    def _abandon(self, queue: RequestQueue, request: Request, kind: str) -> None:
        """The caller gave up: drop the request from ``queue`` if it has not started."""
        if request.future.cancel():
            queue.discard(request)
            self._stats.count(kind)
        elif kind == "timed_out":
            self._stats.count(kind)


def _raise_if_broken(scheduler: Scheduler) -> None:
    if scheduler.broken is not None:
        raise HostBrokenError("the host is broken: a worker died") from scheduler.broken


def _never_started() -> HostNotRunningError:
    return HostNotRunningError(
        "the host is not running: call start() (or use `with host:`) before predict"
    )
