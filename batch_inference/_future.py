"""The light future a caller waits on, and the one place a caller's timeout is translated.

:class:`LightFuture` stands in for :class:`concurrent.futures.Future` where
one known caller waits: :meth:`ModelHost.predict` (a thread blocks on it),
:meth:`ModelHost.predict_async` (an asyncio task awaits its ``loop_future``)
and the remote client's calls (either). ``Future`` makes a condition
variable and a callback list for every request; this makes one lock, and
only for a blocking caller, and :func:`settle` wakes asyncio callers with one
``call_soon_threadsafe`` per event loop per batch.

:func:`wait_blocking` and :func:`wait_async` are how a caller waits for an
outcome within its deadline; past it, they are the one place that raises
:class:`~batch_inference.errors.RequestTimeoutError`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError, InvalidStateError
from typing import Any, TypeVar

from ._checks import loop_deadline, remaining, timeout_message
from .errors import RequestTimeoutError

__all__ = ["LightFuture", "give_up_if_cancelled", "settle", "timed_out", "wait_async",
           "wait_blocking"]

_PENDING, _RUNNING, _CANCELLED, _FINISHED = range(4)
#: Guards the state changes of every LightFuture (each a few bytecodes long).
_STATE_LOCK = threading.Lock()

T = TypeVar("T")
#: ``give_up(token, reason)``: the caller stops waiting (``reason``: "timed_out" or
#: "cancelled"); ``False`` when the outcome is landing at that moment (wait for it).
GiveUp = Callable[[T, str], bool]


class LightFuture:
    """The part of :class:`concurrent.futures.Future` that one waiting caller uses.

    States and transitions are ``Future``'s: pending -> running -> finished,
    or pending -> cancelled, each change atomic; a cancelled one raises
    :class:`concurrent.futures.CancelledError`. Made with an event ``loop``,
    its outcome is copied to ``loop_future`` (an :class:`asyncio.Future` of
    that loop) for the caller to await; without one, one lock, held from the
    start and released once it is done, is what a blocked caller waits on.
    """

    __slots__ = ("_state", "_value", "_is_error", "_ready", "loop", "loop_future")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._state = _PENDING
        self._value: Any = None
        self._is_error = False
        self.loop = loop
        if loop is None:
            self._ready: threading.Lock | None = threading.Lock()
            self._ready.acquire()
            self.loop_future: asyncio.Future[Any] | None = None
        else:
            self._ready = None
            self.loop_future = loop.create_future()

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
                if self._ready is not None:
                    self._ready.release()
            return self._state == _CANCELLED

    def cancelled(self) -> bool:
        return self._state == _CANCELLED

    def running(self) -> bool:
        return self._state == _RUNNING

    def done(self) -> bool:
        return self._state >= _CANCELLED

    def _finish(self, value: Any, is_error: bool) -> asyncio.AbstractEventLoop | None:
        """Settle; the loop whose ``loop_future`` must get the outcome (``None`` if none)."""
        with _STATE_LOCK:
            if self._state >= _CANCELLED:
                raise InvalidStateError(f"the request is already done: {self!r}")
            self._value, self._is_error, self._state = value, is_error, _FINISHED
        if self._ready is not None:
            self._ready.release()
        return self.loop

    def set_result(self, value: Any) -> None:
        if self._finish(value, False) is not None:
            _wake_loop(self.loop, [self])

    def set_exception(self, error: BaseException) -> None:
        if self._finish(error, True) is not None:
            _wake_loop(self.loop, [self])

    def wait(self, timeout: float | None = None) -> bool:
        """Block until done (``True``) or ``timeout`` seconds pass (``False``); threads only."""
        if self._state >= _CANCELLED or self._ready is None:
            return self._state >= _CANCELLED
        return self._ready.acquire(timeout=-1 if timeout is None else max(timeout, 0.0))

    def result(self, timeout: float | None = None) -> Any:
        """The outcome; ``TimeoutError`` if it is not done within ``timeout`` seconds."""
        if not self.wait(timeout):
            raise TimeoutError()
        if self._state == _CANCELLED:
            raise CancelledError()
        if self._is_error:
            raise self._value
        return self._value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not self.wait(timeout):
            raise TimeoutError()
        if self._state == _CANCELLED:
            raise CancelledError()
        return self._value if self._is_error else None

    def __repr__(self) -> str:
        state = ("pending", "running", "cancelled", "finished")[self._state]
        return f"<LightFuture {state}>"


def settle(outcomes: Iterable[tuple[Any, Any, bool]]) -> None:
    """Settle ``(future, value, is_error)`` triples; wake asyncio callers once per event loop.

    A future may be a :class:`LightFuture` or a :class:`concurrent.futures.Future`;
    one already done (cancelled by its caller) is left as it is.
    """
    by_loop: dict[asyncio.AbstractEventLoop, list[LightFuture]] = {}
    for future, value, is_error in outcomes:
        if future.done():
            continue
        try:
            if type(future) is LightFuture:
                loop = future._finish(value, is_error)
                if loop is not None:
                    by_loop.setdefault(loop, []).append(future)
            elif is_error:
                future.set_exception(value)
            else:
                future.set_result(value)
        except InvalidStateError:
            pass  # cancelled by its caller just now
    for loop, futures in by_loop.items():
        _wake_loop(loop, futures)


def _wake_loop(loop: asyncio.AbstractEventLoop, futures: list[LightFuture]) -> None:
    try:
        loop.call_soon_threadsafe(_copy_to_loop, futures)
    except RuntimeError:  # the caller's loop is closed: nobody is waiting any more
        pass


def _copy_to_loop(futures: list[LightFuture]) -> None:
    for future in futures:
        loop_future = future.loop_future  # read here, on the loop (see wait_async)
        if loop_future is None or loop_future.done():  # its caller gave up meanwhile
            continue
        if future._is_error:
            loop_future.set_exception(future._value)
        else:
            loop_future.set_result(future._value)


def timed_out(since_s: float) -> RequestTimeoutError:
    """The error of a request whose deadline passed (it waited since ``since_s``)."""
    return RequestTimeoutError(timeout_message(since_s))


def wait_blocking(
    future: LightFuture, deadline_s: float | None, give_up: GiveUp[T], token: T, since_s: float
) -> Any:
    """Block for ``future``'s outcome until ``deadline_s``; then ``RequestTimeoutError``.

    At the deadline (or when the wait is interrupted, e.g. ``KeyboardInterrupt``)
    ``give_up(token, reason)`` is called; it returns ``False`` when the outcome
    is landing at that moment, which is then waited for and returned.
    """
    try:
        arrived = future.wait(remaining(deadline_s))
    except BaseException:
        if not give_up(token, "cancelled"):
            future.wait(None)
        raise
    if not arrived and not future.done():
        if give_up(token, "timed_out"):
            raise timed_out(since_s) from None
        future.wait(None)
    return future.result()


async def wait_async(
    future: LightFuture, deadline_s: float | None, give_up: GiveUp[T], token: T, since_s: float
) -> Any:
    """Await ``future``'s outcome until ``deadline_s``: :func:`wait_blocking` for asyncio.

    Cancelling the awaiting task gives the request up and re-raises
    :class:`asyncio.CancelledError` (the task's own cancellation).
    """
    loop_future = future.loop_future
    assert loop_future is not None and future.loop is not None
    try:
        if deadline_s is None:  # no timeout context: it costs a few microseconds
            return await loop_future
        async with asyncio.timeout_at(loop_deadline(future.loop, deadline_s)):
            return await loop_future
    except TimeoutError as error:
        if loop_future.done() and not loop_future.cancelled():
            if loop_future.exception() is error:
                raise  # the request's own outcome (a TimeoutError of the model, or expiry)
            return loop_future.result()  # the deadline fired just as the outcome arrived
        if give_up(token, "timed_out"):
            raise timed_out(since_s) from None
        return await _landing(future)
    except BaseException:
        give_up_if_cancelled(loop_future, give_up, token)
        raise


def give_up_if_cancelled(loop_future: asyncio.Future[Any], give_up: GiveUp[T], token: T) -> None:
    """Called where ``await loop_future`` raised: if the awaiting task was cancelled (rather
    than the outcome being an exception), give the request up."""
    if not loop_future.done() or loop_future.cancelled():
        give_up(token, "cancelled")


async def _landing(future: LightFuture) -> Any:
    """The outcome that is being settled right now (its loop_future was cancelled)."""
    assert future.loop is not None
    future.loop_future = future.loop.create_future()  # _copy_to_loop reads it on this loop
    if future.done():
        return future.result()
    return await future.loop_future
