"""The host's request queue: one lock, two conditions, no polling."""

from __future__ import annotations

import asyncio
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
    """

    def __init__(self, max_size: int | None) -> None:
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._items: list[Request] = []
        self._closed = False
        self._max_size = max_size
        self.accepted = 0
        # asyncio callers waiting for room: (loop, future) pairs, woken in order.
        self._space_waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = deque()

    def __len__(self) -> int:
        return len(self._items)

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
                        )
                    self._not_full.wait(None if remaining == _FOREVER else remaining)
                    if self._closed:
                        raise HostNotRunningError("the host stopped while this request waited")
            self._items.append(request)
            self.accepted += 1
            self._not_empty.notify()

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
            self._items.append(request)
            self.accepted += 1
            self._not_empty.notify()
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
        """Block until the batcher selects a batch; ``None`` once closed and empty.

        Chosen requests are marked running (``set_running_or_notify_cancel``):
        cancelled ones are dropped, and ones whose deadline passed are handed
        to ``expire`` instead of being run. ``expire`` is called without the
        lock held: settling a future runs its callbacks, which may call back
        into the host (a callback that submits a request would deadlock).
        """
        while True:
            expired: list[Request] = []
            try:
                batch = self._take_locked(batcher, limits, expired)
            finally:
                for request in expired:
                    expire(request)
            if batch is None or batch:
                return batch

    def _take_locked(
        self, batcher: Batcher, limits: Callable[[], BatchLimits], expired: list[Request]
    ) -> list[Request] | None:
        """:meth:`take` under the lock; ``[]`` when every chosen request had expired."""
        with self._lock:
            while True:
                items = self._items
                if not items:
                    if self._closed:
                        return None
                    self._not_empty.wait()
                    continue
                now_s = time.monotonic()
                selection = batcher.select(items, limits(), now_s)
                if not selection.indices:
                    wait_s = None if selection.wake_at_s is None else selection.wake_at_s - now_s
                    if wait_s is None or wait_s > 0:
                        self._not_empty.wait(wait_s)
                    continue
                chosen = self._remove(selection.indices)
                self._not_full.notify(len(chosen))
                if self._space_waiters:
                    self._wake_space_waiters(len(chosen))
                batch = []
                for request in chosen:
                    if not request.future.set_running_or_notify_cancel():
                        continue
                    if request.deadline_s is not None and request.deadline_s <= now_s:
                        expired.append(request)
                        continue
                    batch.append(request)
                if batch or expired:
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
                return False
            self._not_full.notify()
            if self._space_waiters:
                self._wake_space_waiters(1)
            return True

    def close(self) -> None:
        """Refuse new requests and wake every waiter; queued requests stay."""
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()
            self._not_full.notify_all()
            self._wake_space_waiters(None)

    def drain(self) -> list[Request]:
        """Remove and return every waiting request."""
        with self._lock:
            items, self._items = self._items, []
            self._not_full.notify_all()
            self._wake_space_waiters(None)
            return items

    def wake(self) -> None:
        """Wake waiting workers so they re-read the limits."""
        with self._lock:
            self._not_empty.notify_all()


def _set_room(room: asyncio.Future) -> None:
    if not room.done():  # its caller may have given up meanwhile
        room.set_result(None)
