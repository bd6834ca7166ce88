"""One remote call as its caller waits for it: a light waiter, and settling it exactly once."""

from __future__ import annotations

import threading
from concurrent.futures import Future, InvalidStateError
from typing import Any

__all__ = ["Waiter", "settle"]


class Waiter:
    """What a caller of ``RemoteClient.call`` blocks on: one lock, released with the outcome.

    Lighter than a :class:`concurrent.futures.Future` (no condition variable,
    no callbacks): the I/O thread settles many per message.
    """

    __slots__ = ("_lock", "ok", "value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self.ok = False
        self.value: Any = None

    def set_result(self, value: Any) -> None:
        self.ok, self.value = True, value
        self._lock.release()

    def set_exception(self, error: BaseException) -> None:
        self.value = error
        self._lock.release()

    def wait(self, timeout_s: float | None) -> bool:
        return self._lock.acquire(timeout=-1 if timeout_s is None else timeout_s)

    def outcome(self) -> Any:
        if self.ok:
            return self.value
        raise self.value


def settle(call: Future[Any] | Waiter, outcome: Any, ok: bool) -> None:
    """Settle a call popped from the pending table (a Future may have been cancelled)."""
    try:
        if ok:
            call.set_result(outcome)
        else:
            call.set_exception(outcome)
    except InvalidStateError:
        pass  # a Future its caller cancelled
