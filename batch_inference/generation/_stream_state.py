"""The worker's side of a stream: one request's settings, tokens, readers and end.

The worker appends tokens to a request's :class:`StreamState` with
:func:`publish` (one lock per stream, one ``call_soon_threadsafe`` per event
loop and step) and ends it with :meth:`StreamState._close` once its request's
future is settled. The caller reads it through its
:class:`~batch_inference.generation.stream.TokenStream`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from ._sampling import RowSampler

#: ``(loop, waiter)``: an asyncio reader waiting for the next token or the end.
Waiter = tuple[asyncio.AbstractEventLoop, asyncio.Future]


class StreamState:
    """What the worker writes for one request: its settings, tokens, readers and end.

    The request carries this, not the caller's
    :class:`~batch_inference.generation.TokenStream`, so that the stream can be
    garbage collected (dropping it cancels the request).
    """

    __slots__ = ("prompt", "max_new_tokens", "queued_s", "deadline_s", "first_token_s",
                 "finished_s", "sampler", "stop_ids", "cancel_requested", "_future", "_tokens",
                 "_done", "_changed", "_sleepers", "_waiters", "_end_waiters")

    def __init__(
        self,
        prompt: list[int],
        max_new_tokens: int,
        future: Any,
        queued_s: float,
        deadline_s: float | None = None,
        sampler: RowSampler | None = None,
        stop_ids: frozenset[int] = frozenset(),
    ) -> None:
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.queued_s = queued_s
        self.deadline_s = deadline_s
        self.first_token_s: float | None = None
        self.finished_s: float | None = None
        self.sampler = sampler  # None: greedy
        self.stop_ids = stop_ids  # besides the host's eos_token_id
        #: Set by the caller's side (cancel(), a dropped stream...); the worker drops the row.
        self.cancel_requested = False
        self._future = future  # the request's future
        self._tokens: list[int] = []
        self._done = False
        self._changed = threading.Condition(threading.Lock())
        self._sleepers = 0  # threads waiting on _changed (publish notifies only if any)
        self._waiters: list[Waiter] = []  # async readers: woken by every token and the end
        self._end_waiters: list[Waiter] = []  # awaiting the whole completion: by the end only

    @property
    def tokens(self) -> list[int]:
        """A copy of the tokens generated so far."""
        with self._changed:
            return list(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def _take_waiters(self) -> list[Waiter]:
        """Hand the waiting async readers to the caller (locked by the caller)."""
        waiters, self._waiters = self._waiters, []
        return waiters

    def _close(self) -> None:
        """End the stream (its future is settled): wake every reader."""
        with self._changed:
            self.finished_s = time.monotonic()
            self._done = True
            self._changed.notify_all()
            waiters = self._take_waiters() + self._end_waiters
            self._end_waiters = []
        _wake(waiters)


def publish(items: list[tuple[StreamState, int]]) -> None:
    """Append one token to each stream and wake its readers (one wake-up per loop)."""
    waiters: list[Waiter] = []
    now_s = time.monotonic()
    for stream, token in items:
        with stream._changed:
            if stream.first_token_s is None:
                stream.first_token_s = now_s
            stream._tokens.append(token)
            if stream._sleepers:
                stream._changed.notify_all()
            if stream._waiters:
                waiters.extend(stream._take_waiters())
    _wake(waiters)


def _wake(waiters: list[Waiter]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future]] = {}
    for loop, waiter in waiters:
        by_loop.setdefault(loop, []).append(waiter)
    for loop, futures in by_loop.items():
        try:
            loop.call_soon_threadsafe(_set_all, futures)
        except RuntimeError:  # that reader's loop is closed: nobody waits there any more
            pass


def _set_all(futures: list[asyncio.Future]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)
