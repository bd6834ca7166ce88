"""The host's request queue: one lock, two conditions, no polling."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable

from ._request import Request
from .batcher.base import Batcher, BatchLimits
from .errors import HostNotRunningError, QueueFullError

#: Called with requests the queue refuses to run (deadline passed before start).
Expire = Callable[[Request], None]

#: ``put(..., wait_for_space_until_s=_FOREVER)`` waits for room without a deadline.
_FOREVER = float("inf")


class RequestQueue:
    """Requests waiting for a worker.

    Invariants: ``_items`` is in arrival order and is only read or changed
    under ``_lock``; every wait is a predicate loop on ``_not_empty`` or
    ``_not_full``, so a notification sent before a thread waits is never lost.
    A prefetcher (pipelining, see ``_pipeline.py``) takes only while its model
    is busy, and only a full batch (:meth:`take_ahead`): it waits on
    ``_ahead``; once its model is idle it gets ``[]`` back and the model
    thread takes for itself (:meth:`take`).
    """

    def __init__(self, max_size: int | None) -> None:
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._ahead = threading.Condition(self._lock)
        # Queue length at which a taker waiting on _ahead is worth waking (see _take_locked).
        self._ahead_at = 1
        # Takers waiting on _not_empty / _ahead (changed under _lock, around each wait).
        self._idle_takers = 0
        self._ahead_takers = 0
        self._items: list[Request] = []
        # Taken by a prefetcher, not started yet (see start()); still count as waiting.
        self._held: dict[Request, None] = {}
        self._closed = False
        self._max_size = max_size
        self.accepted = 0
        # asyncio callers waiting for room: (loop, future) pairs, woken in order.
        self._space_waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = deque()

    def __len__(self) -> int:
        """Requests waiting to start: queued, or taken ahead by a prefetcher."""
        return len(self._items) + len(self._held)

    def put(self, request: Request, wait_for_space_until_s: float | None = None) -> None:
        """Queue ``request``, or raise at once.

        With ``max_size`` reached, raise :class:`QueueFullError` unless
        ``wait_for_space_until_s`` is given, in which case wait for room until
        that monotonic time.
        """
        with self._lock:
            if self._closed:
                raise HostNotRunningError("the host is stopped; it accepts no new requests")
            if self._max_size is not None:
                while len(self._items) >= self._max_size:
                    remaining = (
                        None if wait_for_space_until_s is None
                        else wait_for_space_until_s - time.monotonic()
                    )
                    if remaining is None or remaining <= 0:
                        raise QueueFullError(
                            f"the queue holds max_queue_size={self._max_size} requests"
                            if remaining is None else
                            f"the queue still held max_queue_size={self._max_size} requests "
                            "when this request's timeout ran out"
                        )
                    self._not_full.wait(None if remaining == _FOREVER else remaining)
                    if self._closed:
                        raise HostNotRunningError("the host stopped while this request waited")
            self._append(request)

    def _append(self, request: Request) -> None:
        """Queue ``request`` and wake a taker that waits for it (locked)."""
        self._items.append(request)
        self.accepted += 1
        if self._idle_takers:  # notify() costs a microsecond even when nobody waits
            self._not_empty.notify()
        if self._ahead_takers and len(self._items) >= self._ahead_at:
            self._ahead.notify()

    def put_or_wait(
        self, request: Request, loop: asyncio.AbstractEventLoop
    ) -> asyncio.Future | None:
        """Queue ``request`` and return ``None``; with the queue full, return a future instead.

        For asyncio callers that wait for room: the future (of ``loop``) is set
        when room frees or the queue closes; the caller then tries again, or
        gives up with :meth:`forget_space_waiter`.
        """
        with self._lock:
            if self._closed:
                raise HostNotRunningError("the host is stopped; it accepts no new requests")
            if self._max_size is not None and len(self._items) >= self._max_size:
                room = loop.create_future()
                self._space_waiters.append((loop, room))
                return room
            self._append(request)
            return None

    def forget_space_waiter(self, room: asyncio.Future) -> None:
        """An asyncio caller stopped waiting for ``room``; pass on a wake-up it was sent."""
        with self._lock:
            for entry in self._space_waiters:
                if entry[1] is room:
                    self._space_waiters.remove(entry)
                    return
            # Already woken: that wake-up stood for free room, so hand it to the next waiter.
            if self._max_size is None or len(self._items) < self._max_size:
                self._wake_space_waiters(1)

    def _wake_space_waiters(self, count: int | None) -> None:
        """Wake up to ``count`` asyncio callers waiting for room (all for ``None``); locked."""
        waiters = self._space_waiters
        while waiters and (count is None or count > 0):
            loop, room = waiters.popleft()
            try:
                loop.call_soon_threadsafe(_set_room, room)
            except RuntimeError:  # that caller's loop is closed: nobody waits there
                continue
            if count is not None:
                count -= 1

    def take(
        self, batcher: Batcher, limits: Callable[[], BatchLimits], expire: Expire
    ) -> list[Request] | None:
        """Block until the batcher selects a batch, and start it; ``None`` once closed and empty.

        Chosen requests are marked running (``set_running_or_notify_cancel``):
        cancelled ones are dropped, and ones whose deadline passed are handed
        to ``expire`` instead of being run. ``expire`` is called without the
        lock held: settling a future runs its callbacks, which may call back
        into the host (a callback that submits a request would deadlock).
        """
        while True:
            expired: list[Request] = []
            try:
                batch = self._take_locked(batcher, limits, expired, None, None)
            finally:
                for request in expired:
                    expire(request)
            if batch is None or batch:
                return batch

    def take_ahead(
        self,
        batcher: Batcher,
        limits: Callable[[], BatchLimits],
        busy: Callable[[], bool],
        on_hold: Callable[[], None],
    ) -> list[Request] | None:
        """Take a batch ahead for a prefetcher whose model is busy; hold it, do not start it.

        Only while ``busy()`` (the prefetcher's model is running a batch), only
        a batch that cannot grow, and only one holding the oldest request: the
        batcher is asked with ``model_busy=True``. The chosen requests are
        *held*: :meth:`start` starts them when the model runs them, so until
        then they can still be cancelled, expire, or be drained. ``on_hold()``
        is called under the lock as they are taken. Returns ``[]`` (nothing
        taken) once the model is idle, and ``None`` once the queue is closed.
        """
        return self._take_locked(batcher, limits, [], busy, on_hold)

    def _take_locked(
        self,
        batcher: Batcher,
        limits: Callable[[], BatchLimits],
        expired: list[Request],
        busy: Callable[[], bool] | None,
        on_hold: Callable[[], None] | None,
    ) -> list[Request] | None:
        """:meth:`take` (or, with ``busy``, :meth:`take_ahead`) under the lock.

        ``[]`` when every chosen request had expired, or (ahead) the model is idle.
        """
        with self._lock:
            while True:
                items = self._items
                ahead = busy is not None
                if ahead and (self._closed or not busy()):
                    return None if self._closed else []
                if not items:
                    if self._closed:
                        return None
                    if ahead:
                        self._wait_ahead()
                    else:
                        self._wait_idle(None)
                    continue
                now_s = time.monotonic()
                if ahead:
                    current = limits()
                    if current.max_batch_tokens is None and len(items) < current.full_size:
                        selection = None  # too few requests for a full batch
                    else:
                        current = dataclasses.replace(current, model_busy=True)
                        selection = batcher.select(items, current, now_s)
                    if selection is None or 0 not in selection.indices:
                        # Nothing full serves the oldest yet: ask again once a few more came.
                        step = max(1, current.full_size // 4)
                        least = current.full_size if current.max_batch_tokens is None else 1
                        self._ahead_at = max(len(items) + step, least)
                        self._wait_ahead()
                        continue
                else:
                    current = limits()
                    selection = batcher.select(items, current, now_s)
                if not selection.indices:
                    wait_s = None if selection.wake_at_s is None else selection.wake_at_s - now_s
                    if wait_s is None or wait_s > 0:
                        self._wait_idle(wait_s)
                    continue
                reason = batcher.start_reason(items, selection, current, now_s)
                chosen = self._remove(selection.indices)
                for request in chosen:  # the worker's stats label the batch with it
                    request.start_reason = reason
                self._not_full.notify(len(chosen))
                if self._space_waiters:
                    self._wake_space_waiters(len(chosen))
                if on_hold is not None:  # a prefetcher's: they start when its model runs them
                    self._held.update(dict.fromkeys(chosen))
                    on_hold()
                    return chosen
                batch = _mark_started(chosen, now_s, expired)
                if batch or expired:
                    return batch

    def _wait_idle(self, timeout_s: float | None) -> None:
        """Wait on ``_not_empty`` (locked); counted, so that put() notifies only waiters."""
        self._idle_takers += 1
        try:
            self._not_empty.wait(timeout_s)
        finally:
            self._idle_takers -= 1

    def _wait_ahead(self) -> None:
        """Wait on ``_ahead`` (locked); counted, so that put() notifies only waiters."""
        self._ahead_takers += 1
        try:
            self._ahead.wait()
        finally:
            self._ahead_takers -= 1

    def start(self, requests: list[Request], expire: Expire) -> list[Request]:
        """Start held requests (their model runs them now); return those still to run.

        Cancelled ones are dropped; ones drained meanwhile (by stop or a broken
        host) are answered by whoever drained them; ones whose deadline passed
        go to ``expire`` (called without the lock).
        """
        expired: list[Request] = []
        with self._lock:
            held = self._held
            now_s = time.monotonic()
            # A request no longer held was drained meanwhile (and answered by the drainer).
            still_held = [r for r in requests if held.pop(r, False) is None]
            batch = _mark_started(still_held, now_s, expired)
        for request in expired:
            expire(request)
        return batch

    def _remove(self, indices: tuple[int, ...]) -> list[Request]:
        items = self._items
        count = len(indices)
        if indices == tuple(range(count)):
            chosen = items[:count]
            del items[:count]
            return chosen
        picked = set(indices)
        chosen = [items[i] for i in indices]
        self._items = [r for i, r in enumerate(items) if i not in picked]
        return chosen

    def discard(self, request: Request) -> bool:
        """Remove a request that has not started (after its caller gave up)."""
        with self._lock:
            try:
                self._items.remove(request)
            except ValueError:
                return self._held.pop(request, False) is None
            self._not_full.notify()
            if self._space_waiters:
                self._wake_space_waiters(1)
            return True

    def close(self) -> None:
        """Refuse new requests and wake every waiter; queued requests stay."""
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()
            self._ahead.notify_all()
            self._not_full.notify_all()
            self._wake_space_waiters(None)

    def drain(self) -> list[Request]:
        """Remove and return every waiting request."""
        with self._lock:
            items, self._items = self._items + list(self._held), []
            self._held.clear()
            self._not_full.notify_all()
            self._wake_space_waiters(None)
            return items

    def locked(self, action: Callable[[], None]) -> None:
        """Run ``action()`` under the queue's lock (atomic with every take)."""
        with self._lock:
            action()

    def take_ready(self, count: int, expire: Expire) -> list[Request]:
        """Start and return up to ``count`` waiting requests, oldest first; never blocks.

        For a worker that has other work (a running generation batch): it takes
        whatever waits now, possibly nothing. Cancelled requests are dropped and
        ones whose deadline passed go to ``expire`` (called without the lock),
        as in :meth:`take`.
        """
        expired: list[Request] = []
        with self._lock:
            chosen = self._items[:max(count, 0)]
            if not chosen:
                return []
            del self._items[:len(chosen)]
            self._not_full.notify(len(chosen))
            if self._space_waiters:
                self._wake_space_waiters(len(chosen))
            batch = _mark_started(chosen, time.monotonic(), expired)
        for request in expired:
            expire(request)
        return batch


def _mark_started(requests: list[Request], now_s: float, expired: list[Request]) -> list[Request]:
    """Mark requests running; drop cancelled ones, move expired ones to ``expired``.

    Returns the requests to run. Called under the queue's lock.
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


def _set_room(room: asyncio.Future) -> None:
    if not room.done():  # its caller may have given up meanwhile
        room.set_result(None)
