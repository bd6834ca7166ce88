"""The host's request queue: put, take, discard, close, drain; one lock, no polling."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from ._checks import FOREVER
from ._request import Request, start_requests
from .batcher.base import Selection
from .errors import HostNotRunningError, QueueFullError

#: Called with requests the queue refuses to run (deadline passed before start).
Expire = Callable[[Request], None]
#: ``choose(waiting, now_s)``: which of the waiting requests to take (``batcher.select``'s way).
Choose = Callable[[list[Request], float], Selection]


def oldest(count: int) -> Choose:
    """A :data:`Choose` of the ``count`` oldest requests (or all, if fewer wait)."""
    return lambda waiting, now_s: Selection(tuple(range(min(count, len(waiting)))))


class RequestQueue:
    """Requests waiting for a worker, in arrival order.

    Invariants: ``_items`` is only read or changed under ``_lock``; every wait
    is a predicate loop on a condition of that lock, so a notification sent
    before a thread waits is never lost. Takers pass their policy in
    (``choose``); the queue calls nothing else of theirs under its lock.
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
        self._taken = 0  # taken unstarted (expire=None), not released yet
        self._closed = False
        self.max_size = max_size
        self.accepted = 0
        # asyncio callers waiting for room: (loop, future) pairs, woken in order.
        self._space_waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = deque()

    def __len__(self) -> int:
        """Requests waiting to start (taken unstarted, not released yet, included)."""
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
                self._freed(1)  # it was woken: hand that room to the next one

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
    def take(self, choose: Choose, expire: Expire | None, wait: bool = True
             ) -> list[Request] | None:
        """Take the requests ``choose(waiting, now_s)`` selects, oldest first.

        With ``expire``, they are marked running: cancelled ones are dropped,
        and ones whose deadline passed go to ``expire``, called without the
        lock (settling a future runs callbacks that may call the host). With
        ``expire=None`` they are only taken, not started, and still count in
        ``len()`` until :meth:`release`. With ``wait``, block until something
        is selected (re-asking by the selection's ``wake_at_s``); without,
        return ``[]`` at once. ``None``: the queue is closed and empty.
        """
        while True:
            expired: list[Request] = []
            with self._lock:
                while True:
                    if not self._items:
                        if self._closed or not wait:
                            return None if self._closed else []
                        self._wait_idle(None)
                        continue
                    now_s = time.monotonic()
                    selection = choose(self._items, now_s)
                    if selection.indices or not wait:
                        break
                    wake_s = selection.wake_at_s
                    if wake_s is None or wake_s > now_s:
                        self._wait_idle(None if wake_s is None else wake_s - now_s)
                chosen = self._remove(selection.indices)
                if selection.reason is not None:  # the worker's stats label the batch with it
                    for request in chosen:
                        request.start_reason = selection.reason
                if expire is None:
                    self._taken += len(chosen)
                    return chosen
                batch = start_requests(chosen, now_s, expired)
            for request in expired:
                expire(request)
            if batch or not wait:
                return batch

    def release(self, count: int) -> None:
        """``count`` requests taken unstarted (``expire=None``) started or left."""
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
        if indices == tuple(range(count)):  # the oldest ones
            chosen = items[:count]
            del items[:count]
        else:
            picked = set(indices)
            chosen = [items[i] for i in indices]
            self._items = [r for i, r in enumerate(items) if i not in picked]
        self._freed(count)
        return chosen

    # ------------------------------------------------------------------ remove, end
    def discard(self, request: Request) -> bool:
        """Remove a request that has not been taken (its caller gave up)."""
        with self._lock:
            try:
                self._items.remove(request)
            except ValueError:
                return False
            self._freed(1)
            return True

    def close(self) -> None:
        """Refuse new requests and wake every waiter; queued requests stay."""
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()
            self._grown.notify_all()
            self._freed(None)

    def drain(self) -> list[Request]:
        """Remove and return every queued request."""
        with self._lock:
            items, self._items = self._items, []
            self._freed(None)
            return items

    def _freed(self, count: int | None) -> None:  # locked
        """Room for ``count`` more (``None``: for all): wake callers waiting for it."""
        if count is None:
            self._not_full.notify_all()
        else:
            self._not_full.notify(count)
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
