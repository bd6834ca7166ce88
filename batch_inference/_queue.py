"""The host's request queue: put, take, discard, close, drain; one lock, no polling."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from ._checks import FOREVER
from ._request import Request, start_requests
from .batcher.base import Batcher, BatchLimits
from .errors import HostNotRunningError, QueueFullError

#: Called with requests the queue refuses to run (deadline passed before start).
Expire = Callable[[Request], None]
#: ``choose(waiting, now_s)``: the indices of the waiting requests to take now, if any.
Choose = Callable[[list[Request], float], Sequence[int]]


class RequestQueue:
    """Requests waiting for a worker, in arrival order.

    Invariants: ``_items`` is only read or changed under ``_lock``; every wait
    is a predicate loop on a condition of that lock, so a notification sent
    before a thread waits is never lost.
    """

    def __init__(self, max_size: int | None) -> None:
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._grown = threading.Condition(self._lock)  # for wait_for()
        self._idle_takers = 0  # waiting on _not_empty (counted: notify costs even when idle)
        self._watchers = 0  # waiting on _grown, for at least _watch_at requests
        self._watch_at = FOREVER
        self._items: list[Request] = []
        self._taken = 0  # taken by take_now, not released yet
        self._closed = False
        self.max_size = max_size
        self.accepted = 0
        # asyncio callers waiting for room: (loop, future) pairs, woken in order.
        self._space_waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = deque()

    def __len__(self) -> int:
        """Requests waiting to start (taken by :meth:`take_now` and not released included)."""
        return len(self._items) + self._taken

    # ------------------------------------------------------------------ put
    def put(self, request: Request, wait_for_space_until_s: float | None = None) -> None:
        """Queue ``request``; when full, raise :class:`QueueFullError`, or wait for room
        until the monotonic time ``wait_for_space_until_s`` (``FOREVER``: no end)."""
        with self._lock:
            self._refuse_if_closed()
            while self.max_size is not None and len(self._items) >= self.max_size:
                until_s = wait_for_space_until_s
                wait_s = None if until_s is None else until_s - time.monotonic()
                if wait_s is None or wait_s <= 0:
                    raise QueueFullError(
                        f"the queue holds max_queue_size={self.max_size} requests"
                        if wait_s is None else
                        f"the queue still held max_queue_size={self.max_size} requests "
                        "when this request's timeout ran out"
                    )
                self._not_full.wait(None if until_s == FOREVER else wait_s)
                if self._closed:
                    raise HostNotRunningError("the host stopped while this request waited")
            self._append(request)

    def put_or_wait(
        self, request: Request, loop: asyncio.AbstractEventLoop
    ) -> asyncio.Future | None:
        """Queue ``request`` and return ``None``; when full, a future of ``loop`` instead,
        set once room frees or the queue closes (then try again, or
        :meth:`forget_space_waiter`)."""
        with self._lock:
            self._refuse_if_closed()
            if self.max_size is not None and len(self._items) >= self.max_size:
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
                    return self._space_waiters.remove(entry)
            if self.max_size is None or len(self._items) < self.max_size:
                self._wake_space_waiters(1)  # it was woken: hand that room to the next one

    def _refuse_if_closed(self) -> None:
        if self._closed:
            raise HostNotRunningError("the host is stopped; it accepts no new requests")

    def _append(self, request: Request) -> None:  # locked
        items = self._items
        items.append(request)
        self.accepted += 1
        if self._idle_takers:
            self._not_empty.notify()
        if self._watchers and len(items) >= self._watch_at:
            self._watch_at = FOREVER  # the watchers still short lower it again
            self._grown.notify_all()

    # ------------------------------------------------------------------ take
    def take(
        self, batcher: Batcher, limits: Callable[[], BatchLimits], expire: Expire
    ) -> list[Request] | None:
        """Block until the batcher selects a batch, and start it; ``None`` once closed and empty.

        Chosen requests are marked running: cancelled ones are dropped, and
        ones whose deadline passed go to ``expire``, which is called without
        the lock (settling a future runs callbacks that may call the host).
        """
        while True:
            expired: list[Request] = []
            with self._lock:
                batch = self._select(batcher, limits, expired)
            for request in expired:
                expire(request)
            if batch is None or batch:
                return batch

    def _select(self, batcher: Batcher, limits: Callable[[], BatchLimits],
                expired: list[Request]) -> list[Request] | None:  # locked
        while True:
            if not self._items:
                if self._closed:
                    return None
                self._wait_idle(None)
                continue
            now_s = time.monotonic()
            selection = batcher.select(self._items, limits(), now_s)
            if not selection.indices:
                wait_s = None if selection.wake_at_s is None else selection.wake_at_s - now_s
                if wait_s is None or wait_s > 0:
                    self._wait_idle(wait_s)
                continue
            batch = start_requests(self._remove(selection.indices), now_s, expired)
            if batch or expired:
                return batch

    def take_oldest(self, count: int, expire: Expire, wait: bool) -> list[Request] | None:
        """Start and return up to ``count`` of the oldest requests (as :meth:`take` does).

        With ``wait``, block until one waits; ``None`` once closed and empty.
        """
        expired: list[Request] = []
        with self._lock:
            while wait and not self._items and not self._closed:
                self._wait_idle(None)
            if not self._items:
                return None if self._closed else []
            batch = start_requests(self._remove(range(min(count, len(self._items)))),
                                   time.monotonic(), expired)
        for request in expired:
            expire(request)
        return batch

    def take_now(self, choose: Choose) -> list[Request] | None:
        """Take what ``choose`` picks now, without starting it; ``None`` once closed.

        The taken requests still count as waiting until :meth:`release`.
        """
        with self._lock:
            if self._closed:
                return None
            indices = choose(self._items, time.monotonic()) if self._items else ()
            if not indices:
                return []
            chosen = self._remove(indices)
            self._taken += len(chosen)
            return chosen

    def release(self, count: int) -> None:
        """``count`` requests taken by :meth:`take_now` started or left."""
        with self._lock:
            self._taken -= count

    def wait_for(self, count: int) -> bool:
        """Block until at least ``count`` requests wait (``True``) or the queue closes."""
        with self._lock:
            while not self._closed and len(self._items) < count:
                self._watch_at = min(self._watch_at, count)
                self._watchers += 1
                self._grown.wait()
                self._watchers -= 1
            return not self._closed

    def _wait_idle(self, timeout_s: float | None) -> None:  # locked
        self._idle_takers += 1
        self._not_empty.wait(timeout_s)  # a worker thread: no KeyboardInterrupt here
        self._idle_takers -= 1

    def _remove(self, indices: Sequence[int]) -> list[Request]:  # locked; frees room
        items = self._items
        count = len(indices)
        if isinstance(indices, range) or indices == tuple(range(count)):  # the oldest ones
            chosen = items[:count]
            del items[:count]
        else:
            picked = set(indices)
            chosen = [items[i] for i in indices]
            self._items = [r for i, r in enumerate(items) if i not in picked]
        self._not_full.notify(count)
        if self._space_waiters:
            self._wake_space_waiters(count)
        return chosen

    # ------------------------------------------------------------------ remove, end
    def discard(self, request: Request) -> bool:
        """Remove a request that has not been taken (its caller gave up)."""
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
            for condition in (self._not_empty, self._grown, self._not_full):
                condition.notify_all()
            self._wake_space_waiters(None)

    def drain(self) -> list[Request]:
        """Remove and return every queued request."""
        with self._lock:
            items, self._items = self._items, []
            self._not_full.notify_all()
            self._wake_space_waiters(None)
            return items

    def _wake_space_waiters(self, count: int | None) -> None:  # locked
        """Wake up to ``count`` asyncio callers waiting for room (all for ``None``)."""
        waiters = self._space_waiters
        while waiters and (count is None or count > 0):
            loop, room = waiters.popleft()
            try:
                loop.call_soon_threadsafe(_set_room, room)
            except RuntimeError:  # that caller's loop is closed: nobody waits there
                continue
            if count is not None:
                count -= 1


def _set_room(room: asyncio.Future) -> None:
    if not room.done():  # its caller may have given up meanwhile
        room.set_result(None)
