"""Pipelining: one worker's next batch is formed and prepared while its model runs.

Each worker has a :class:`Prefetcher` thread. It takes a batch from the queue,
prepares it (``batcher.batch``: gather, pad, stack; then the copy to the
worker's device) and hands it over through a one-batch slot; the worker's
model thread only runs prepared batches. While the model is busy, the
prefetcher asks the queue for a batch *ahead* of time, and takes one only if
waiting longer could not make it larger (a full batch that serves the oldest
request): forming batch k+1 early would otherwise make it smaller. When the
model is idle, it takes whatever the batcher selects, at once.

Invariants (all under ``_cv``, every wait a predicate loop):

* at most one prepared batch waits in the slot;
* ``_running`` is true exactly while the model thread runs a batch; it is read
  by the queue, under the queue's lock, to choose between "ahead" and "now";
* the queue *holds* every request the prefetcher took until the model thread
  starts it (``RequestQueue.start``); so a request in preparation or in the
  slot can still be cancelled, expire, or be drained (and answered) by
  ``stop(cancel_pending=True)`` or a broken host. The prefetcher itself never
  answers a request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._queue import Expire, RequestQueue
from ._request import Request
from .batcher.base import Batcher, BatchLimits


@dataclass
class Prepared:
    """A batch ready for ``predict_batch``, or the error its preparation raised."""

    requests: list[Request]
    args: tuple[Any, ...] = ()
    context: Any = None
    error: Exception | None = None
    prepared_s: float = 0.0


class Prefetcher:
    """Feeds one worker's model thread with prepared batches (see the module docstring)."""

    def __init__(
        self,
        queue: RequestQueue,
        batcher: Batcher,
        limits: Callable[[], BatchLimits],
        expire: Expire,
        prepare: Callable[[list[Request]], Prepared],
        on_fatal: Callable[[BaseException, list[Request]], None],
        name: str,
    ) -> None:
        self._queue = queue
        self._batcher = batcher
        self._limits = limits
        self._expire = expire
        self._prepare = prepare
        self._on_fatal = on_fatal
        self._cv = threading.Condition()
        self._slot: Prepared | None = None
        self._running = False
        self._ended = False
        self._model_died: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)

    # ------------------------------------------------------------------ model thread side
    def next(self) -> Prepared | None:
        """The next prepared batch (the model is then busy); ``None`` when no more will come."""
        with self._cv:
            while self._slot is None and not self._ended:
                self._cv.wait()
            prepared, self._slot = self._slot, None
            self._running = prepared is not None
            self._cv.notify_all()  # the slot is free
            return prepared

    def ran(self) -> None:
        """The model finished its batch: stop waiting for a full batch, take what there is."""
        self._running = False
        self._queue.wake_ahead()

    def has_next(self) -> bool:
        """Whether a prepared batch waits in the slot."""
        return self._slot is not None

    def model_died(self, error: BaseException) -> None:
        """The model thread is dying: stop (the host drains the held requests)."""
        with self._cv:
            self._model_died = error
            self._slot = None
            self._cv.notify_all()

    # ------------------------------------------------------------------ prefetcher thread
    def _busy(self) -> bool:
        return self._running

    def _loop(self) -> None:
        try:
            while True:
                with self._cv:
                    while self._slot is not None and self._model_died is None:
                        self._cv.wait()
                    if self._model_died is not None:
                        return
                batch = self._queue.take(self._batcher, self._limits, self._expire, self._busy)
                if batch is None:
                    return
                prepared = self._prepare(batch)
                prepared.prepared_s = time.monotonic()
                with self._cv:
                    if self._model_died is not None:
                        return  # the host is broken; it drains what the queue holds
                    self._slot = prepared
                    self._cv.notify_all()
        except BaseException as error:  # noqa: BLE001 - a dying prefetcher must fail every caller
            self._on_fatal(error, [])  # breaks the host, which drains what the queue holds
        finally:
            with self._cv:
                self._ended = True
                self._cv.notify_all()
