"""One caller's request as it travels through the host: made, started, settled."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from . import _future
from ._checks import FOREVER, checked_timeout
from ._future import LightFuture
from .batcher.base import Batcher, RequestInfo
from .errors import InvalidRequestError


class Request:
    """A queued call: its arguments, description, future and deadline.

    ``future`` is the single source of truth for the outcome: a
    :class:`concurrent.futures.Future` (:meth:`ModelHost.submit`, generation)
    or, where one known caller waits, a :class:`~batch_inference._future.LightFuture`
    (:meth:`ModelHost.predict`, :meth:`ModelHost.predict_async`).
    """

    __slots__ = ("args", "info", "future", "enqueued_s", "deadline_s", "start_reason")

    def __init__(
        self,
        args: tuple[Any, ...],
        info: RequestInfo,
        enqueued_s: float,
        deadline_s: float | None,
        future: Future[Any] | LightFuture | None = None,
    ) -> None:
        self.args = args
        self.info = info
        self.future: Any = Future() if future is None else future
        self.enqueued_s = enqueued_s
        self.deadline_s = deadline_s
        self.start_reason = "model_idle"  # why its batch started: set by the queue as it takes


def make_request(
    args: tuple[Any, ...],
    timeout: float | None,
    future: Future[Any] | LightFuture,
    batcher: Batcher,
    arg_range: tuple[int, float],
    default_timeout_s: float | None,
) -> Request:
    """A checked request for ``predict_batch`` (which takes ``arg_range`` arguments).

    Raises
    ------
    InvalidRequestError
        Too few or too many arguments, arguments the batcher refuses, or a
        ``timeout`` that is not a number of seconds > 0.
    """
    low, high = arg_range
    if not low <= len(args) <= high:
        if high == FOREVER:
            expected = f"at least {low}"
        else:
            expected = str(low) if low == high else f"{low} to {int(high)}"
        raise InvalidRequestError(f"predict_batch takes {expected} arguments, got {len(args)}")
    info = batcher.inspect(args)
    now_s = time.monotonic()
    return Request(args, info, now_s, deadline_of(timeout, default_timeout_s, now_s), future)


def deadline_of(timeout: Any, default_timeout_s: float | None, now_s: float) -> float | None:
    """The monotonic deadline of a call given ``timeout`` (``None``: the host's default)."""
    if timeout is None:
        timeout = default_timeout_s
    elif type(timeout) is not float or not 0.0 < timeout < FOREVER:
        timeout = checked_timeout(timeout)  # an int, inf (no deadline), or refused
    return None if timeout is None else now_s + timeout


def start_requests(
    requests: Sequence[Request], now_s: float, expired: list[Request]
) -> list[Request]:
    """Mark requests running; drop cancelled ones, move expired ones to ``expired``.

    Returns the requests to run. A cancelled request is never half-run: once
    marked running, its caller can no longer cancel it.
    """
    batch = []
    for request in requests:
        if not request.future.set_running_or_notify_cancel():
            continue
        if request.deadline_s is not None and request.deadline_s <= now_s:
            expired.append(request)
            continue
        batch.append(request)
    return batch


#: ``(request, value, is_error)``: how one request ended.
Outcome = tuple[Request, Any, bool]


def settle(outcomes: list[Outcome]) -> None:
    """Resolve each request's future; wake asyncio callers once per event loop and batch."""
    _future.settle([(r.future, value, is_error) for r, value, is_error in outcomes])
