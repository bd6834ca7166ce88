"""One caller's request as it travels through the host."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future, InvalidStateError
from typing import Any, Literal

from .batcher.base import RequestInfo

#: Who waits for a request (see :class:`Request`).
RequestKind = Literal["future", "thread", "loop"]


class Request:
    """A queued call: its arguments, description, future and deadline.

    ``future`` is the single source of truth for the outcome. ``loop`` and
    ``loop_future`` are set for asyncio callers: the worker copies the outcome
    to them in one ``call_soon_threadsafe`` per event loop and batch. Its type
    depends on the caller (``kind``): ``"future"`` (:meth:`ModelHost.submit`)
    gets a :class:`concurrent.futures.Future`; ``"loop"`` (an asyncio caller,
    nobody blocks on it) a :class:`LoopRequestState`; ``"thread"``
    (:meth:`ModelHost.predict`, only its caller blocks on it) a
    :class:`ThreadRequestState`.
    """

    __slots__ = ("args", "info", "future", "enqueued_s", "deadline_s", "loop", "loop_future",
                 "start_reason")

    def __init__(
        self,
        args: tuple[Any, ...],
        info: RequestInfo,
        enqueued_s: float,
        deadline_s: float | None,
        kind: RequestKind = "future",
    ) -> None:
        self.args = args
        self.info = info
        self.future: Future[Any] | LoopRequestState = (
            Future() if kind == "future" else
            ThreadRequestState() if kind == "thread" else LoopRequestState()
        )
        self.enqueued_s = enqueued_s
        self.deadline_s = deadline_s
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_future: asyncio.Future[Any] | None = None
        self.start_reason = "model_idle"  # why its batch started: set by the queue as it takes


_PENDING, _RUNNING, _CANCELLED, _FINISHED = range(4)
#: Guards the state changes of every LoopRequestState (each a few bytecodes long).
_STATE_LOCK = threading.Lock()


class LoopRequestState:
    """The part of :class:`concurrent.futures.Future` an asyncio caller's request uses.

    States and transitions are those of ``Future``: pending -> running ->
    finished, or pending -> cancelled; each change is atomic. Nothing blocks
    on it (the caller awaits its ``loop_future``), so unlike ``Future`` it
    makes no condition variable: creating and settling it costs a fraction.
    """

    __slots__ = ("_state", "_value", "_is_error")

    def __init__(self) -> None:
        self._state = _PENDING
        self._value: Any = None
        self._is_error = False

    def set_running_or_notify_cancel(self) -> bool:
        with _STATE_LOCK:
            if self._state == _PENDING:
                self._state = _RUNNING
                return True
            if self._state == _CANCELLED:
                return False
        raise RuntimeError("Future in unexpected state")

    def cancel(self) -> bool:
        with _STATE_LOCK:
            if self._state == _PENDING:
                self._state = _CANCELLED
            return self._state == _CANCELLED

    def cancelled(self) -> bool:
        return self._state == _CANCELLED

    def running(self) -> bool:
        return self._state == _RUNNING

    def done(self) -> bool:
        return self._state >= _CANCELLED

    def _finish(self, value: Any, is_error: bool) -> None:
        with _STATE_LOCK:
            if self._state >= _CANCELLED:
                raise InvalidStateError(f"the request is already done: {self!r}")
            self._value, self._is_error, self._state = value, is_error, _FINISHED

    def set_result(self, value: Any) -> None:
        self._finish(value, False)

    def set_exception(self, error: BaseException) -> None:
        self._finish(error, True)

    def exception(self) -> BaseException | None:
        self._check_done()
        return self._value if self._is_error else None

    def result(self) -> Any:
        self._check_done()
        if self._is_error:
            raise self._value
        return self._value

    def _check_done(self) -> None:
        if self._state == _CANCELLED:
            raise asyncio.CancelledError()
        if self._state != _FINISHED:
            raise InvalidStateError("the request has not finished")


class ThreadRequestState(LoopRequestState):
    """A :class:`LoopRequestState` its one caller can block on, with a timeout.

    For :meth:`ModelHost.predict`: only the caller's own thread waits, so one
    lock, held from the start and released once the request is done, does
    what ``Future``'s condition variable would, at a fraction of the cost.
    """

    __slots__ = ("_ready",)

    def __init__(self) -> None:
        super().__init__()
        self._ready = threading.Lock()
        self._ready.acquire()

    def _finish(self, value: Any, is_error: bool) -> None:
        super()._finish(value, is_error)
        self._ready.release()

    def cancel(self) -> bool:
        with _STATE_LOCK:
            if self._state == _PENDING:
                self._state = _CANCELLED
                self._ready.release()
            return self._state == _CANCELLED

    def result(self, timeout: float | None = None) -> Any:
        """The outcome; ``TimeoutError`` if it is not done within ``timeout`` seconds."""
        if self._state < _CANCELLED and not self._ready.acquire(
            timeout=-1 if timeout is None else max(timeout, 0.0)
        ):
            raise TimeoutError()
        return super().result()  # a later call sees the settled state: it never waits


#: ``(request, value, is_error)``: how one request ended.
Outcome = tuple[Request, Any, bool]


def settle(outcomes: list[Outcome]) -> None:
    """Resolve each request's future; wake asyncio callers once per event loop.

    ``asyncio.wrap_future`` would cost one ``call_soon_threadsafe`` (a wake-up
    of the loop) per request; here a batch costs one per loop.
    """
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, Any, bool]]] = {}
    for request, value, is_error in outcomes:
        future = request.future
        if future.done():
            continue
        if is_error:
            future.set_exception(value)
        else:
            future.set_result(value)
        if request.loop is not None:
            by_loop.setdefault(request.loop, []).append((request.loop_future, value, is_error))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_copy_to_loop, items)
        except RuntimeError:  # the caller's loop is closed: nobody is waiting any more
            pass


def _copy_to_loop(items: list[tuple[Any, Any, bool]]) -> None:
    for loop_future, value, is_error in items:
        if loop_future.done():  # cancelled by its caller meanwhile
            continue
        if is_error:
            loop_future.set_exception(value)
        else:
            loop_future.set_result(value)
