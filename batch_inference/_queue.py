"""The host's request queue: one lock, two conditions, no polling."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ._request import Request
from .batcher.base import Batcher, BatchLimits
from .errors import HostNotRunningError, QueueFullError

#: Called with requests the queue refuses to run (deadline passed before start).
Expire = Callable[[Request], None]


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
                    self._not_full.wait(remaining)
                    if self._closed:
                        raise HostNotRunningError("the host stopped while this request waited")
            self._items.append(request)
            self.accepted += 1
            self._not_empty.notify()

    def take(
        self, batcher: Batcher, limits: Callable[[], BatchLimits], expire: Expire
    ) -> list[Request] | None:
        """Block until the batcher selects a batch; ``None`` once closed and empty.

        Chosen requests are marked running (``set_running_or_notify_cancel``):
        cancelled ones are dropped, and ones whose deadline passed are handed
        to ``expire`` instead of being run.
        """
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
                batch = []
                for request in chosen:
                    if not request.future.set_running_or_notify_cancel():
                        continue
                    if request.deadline_s is not None and request.deadline_s <= now_s:
                        expire(request)
                        continue
                    batch.append(request)
                if batch:
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
            return True

    def close(self) -> None:
        """Refuse new requests and wake every waiter; queued requests stay."""
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()
            self._not_full.notify_all()

    def drain(self) -> list[Request]:
        """Remove and return every waiting request."""
        with self._lock:
            items, self._items = self._items, []
            self._not_full.notify_all()
            return items

    def wake(self) -> None:
        """Wake waiting workers so they re-read the limits."""
        with self._lock:
            self._not_empty.notify_all()
