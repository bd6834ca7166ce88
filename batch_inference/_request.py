"""One caller's request as it travels through the host."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from typing import Any

from .batcher.base import RequestInfo


class Request:
    """A queued call: its arguments, description, future and deadline.

    ``future`` is the single source of truth for the outcome. ``loop`` and
    ``loop_future`` are set for asyncio callers: the worker copies the outcome
    to them in one ``call_soon_threadsafe`` per event loop and batch.
    """

    __slots__ = ("args", "info", "future", "enqueued_s", "deadline_s", "loop", "loop_future")

    def __init__(
        self,
        args: tuple[Any, ...],
        info: RequestInfo,
        enqueued_s: float,
        deadline_s: float | None,
    ) -> None:
        self.args = args
        self.info = info
        self.future: Future[Any] = Future()
        self.enqueued_s = enqueued_s
        self.deadline_s = deadline_s
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_future: asyncio.Future[Any] | None = None


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
