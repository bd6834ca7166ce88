"""Pipelining: one worker's next batch is formed and prepared while its model runs.

Each worker has a :class:`Prefetcher` thread. While the model is busy, it
asks the queue for a batch *ahead* of time, and takes one only if waiting
longer could not make it larger (a full batch that serves the oldest
request): forming batch k+1 early would otherwise make it smaller. It
prepares that batch (``batcher.batch``: gather, pad, stack; then the copy to
the worker's device) and hands it over through a one-batch slot.

When the model finishes and nothing is prepared, the *model thread* takes the
next batch itself (whatever the batcher selects, at once) and prepares it:
an idle model then costs no hand-off between threads, which is most of what
a small batch costs.

Invariants:

* at most one prepared batch waits in the slot (under ``_cv``);
* ``_running`` is true exactly while the model thread runs a batch; it turns
  false under the queue's lock, and the prefetcher takes only while it is
  true (the queue reads it under that lock), so after the model thread turns
  it false, either the prefetcher already holds a batch (``_holding``, also
  set under the queue's lock; the model thread waits for the slot) or it
  takes nothing more until the model runs again;
* the queue *holds* every request the prefetcher took until the model thread
  starts it (``RequestQueue.start``); so a request in preparation or in the
  slot can still be cancelled, expire, or be drained (and answered) by
  ``stop(cancel_pending=True)`` or a broken host. The prefetcher itself never
  answers a request.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._queue import Expire, RequestQueue
from ._request import Request
from ._staging import NO_WAIT, Ready
from .batcher.base import Batcher, BatchLimits


@dataclass
class Prepared:
    """A batch ready for ``predict_batch``, or the error its preparation raised."""

    requests: list[Request]
    args: Any = ()
    context: Any = None
    error: Exception | None = None
    ready: Ready = NO_WAIT
    """The model thread calls ``ready.wait()`` before the batch runs (see ``_staging.py``)."""


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
        self._holding = False  # took a batch ahead that is not in the slot yet
        self._stopped = False
        self._model_died: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)

    # ------------------------------------------------------------------ model thread side
    def next(self) -> Prepared | list[Request] | None:
        """The next batch; the model is busy from now on. ``None`` when no more will come.

        A :class:`Prepared` batch the prefetcher holds (start it with
        ``RequestQueue.start``), or else a list of requests this thread took
        from the queue itself, already started, to prepare.
        """
        with self._cv:
            while self._slot is None and self._holding and self._model_died is None:
                self._cv.wait()
            if self._slot is not None:
                prepared, self._slot = self._slot, None
                self._running = True
                self._cv.notify_all()  # the slot is free
                return prepared
        batch = self._queue.take(self._batcher, self._limits, self._expire)
        if batch is None:
            return None
        with self._cv:
            self._running = True
            self._cv.notify_all()  # the prefetcher may look ahead now
        return batch

    def ran(self) -> None:
        """The model finished its batch: the prefetcher stops taking ahead.

        Called by the model thread, the only one that sets ``_running``, so a
        second call after the first (the worker calls it once per batch, and
        ``Worker._run`` early when it scatters inline) takes no lock.
        """
        if self._running:
            self._queue.locked(self._idle)

    def _idle(self) -> None:  # under the queue's lock
        self._running = False

    def has_next(self) -> bool:
        """Whether a prepared batch waits in the slot."""
        return self._slot is not None

    def model_died(self, error: BaseException) -> None:
        """The model thread is dying: stop (the host drains the held requests)."""
        with self._cv:
            self._model_died = error
            self._slot = None
            self._cv.notify_all()

    def stop(self) -> None:
        """The model thread ends normally: so does the prefetcher."""
        with self._cv:
            self._stopped = True
            self._cv.notify_all()

    # ------------------------------------------------------------------ prefetcher thread
    def _busy(self) -> bool:
        return self._running

    def _hold(self) -> None:  # under the queue's lock, as it takes
        self._holding = True

    def _loop(self) -> None:
        try:
            while True:
                with self._cv:
                    while not (self._running and self._slot is None) and not self._done():
                        self._cv.wait()
                    if self._done():
                        return
                batch = self._queue.take_ahead(self._batcher, self._limits, self._busy, self._hold)
                if batch is None:
                    return  # closed: the model thread drains what is left
                if not batch:
                    continue  # the model is idle: its thread takes for itself
                prepared = self._prepare(batch)
                with self._cv:
                    if self._model_died is not None:
                        return  # the host is broken; it drains what the queue holds
                    self._slot = prepared
                    self._holding = False
                    self._cv.notify_all()
        except BaseException as error:  # noqa: BLE001 - a dying prefetcher must fail every caller
            self._on_fatal(error, [])  # breaks the host, which drains what the queue holds
        finally:
            with self._cv:
                self._holding = False  # nothing more comes: a waiting model thread takes itself
                self._cv.notify_all()

    def _done(self) -> bool:
        return self._stopped or self._model_died is not None
