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
a small batch costs. When a prepared batch does wait, the model thread hands
the batch it finished back to the prefetch thread (:meth:`Prefetcher.answer_later`)
and runs the next one at once; the prefetch thread answers those callers,
then looks ahead again: one thread, woken once per batch, for both.

The prefetch policy is this module's: the prefetcher waits until enough
requests queue for a full batch (``_ahead_at``; it asks the queue only to
wake it at that length), and takes with ``model_busy=True`` only a batch
that holds the oldest request. What it took and has not started is *held*
here (``_held``), so that a held request can still be cancelled, expire, or
be drained (and answered) by ``stop(cancel_pending=True)`` or a broken host.

Invariants (``_cv`` guards the fields below; its lock is taken before the
queue's, never after):

* at most one prepared batch waits in the slot;
* ``_running`` is true exactly while the model thread runs a batch; the
  prefetcher takes only while it is true, under ``_cv``, so after the model
  thread turns it false (:meth:`Prefetcher.ran`), either the prefetcher
  already holds a batch (``_holding``: the model thread waits for the slot)
  or it takes nothing more until the model runs again;
* a request is in ``_held`` from its take until the model thread starts it
  (:meth:`Prefetcher.start`), it is discarded, or it is drained; the queue
  counts it as waiting for that long. The prefetcher never answers a request.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._queue import Expire, RequestQueue
from ._request import Request, start_requests
from ._staging import NO_WAIT, Ready
from .batcher.base import Batcher, BatchLimits, Selection

_NOTHING = Selection()


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
        answer: Callable[[list[Request], Any, Any], None],
        on_fatal: Callable[[BaseException, list[Request]], None],
        name: str,
    ) -> None:
        self._queue = queue
        self._batcher = batcher
        self._limits = limits
        self._expire = expire
        self._prepare = prepare
        self._answer = answer
        self._on_fatal = on_fatal
        self._cv = threading.Condition()
        self._slot: Prepared | None = None
        self._running = False
        self._holding = False  # took a batch ahead that is not in the slot yet
        self._held: dict[Request, None] = {}  # taken ahead, not started
        self._outbox: list[tuple[list[Request], Any, Any]] = []  # batches run, to answer
        self._ahead_at = 0  # queue length at which a full batch is worth looking for (0: least)
        self._stopped = False
        self._model_died: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)

    # ------------------------------------------------------------------ model thread side
    def next(self) -> Prepared | list[Request] | None:
        """The next batch; the model is busy from now on. ``None`` when no more will come.

        A :class:`Prepared` batch taken ahead (start it with :meth:`start`),
        or else a list of requests this thread took from the queue itself,
        already started, to prepare.
        """
        with self._cv:
            while self._slot is None and self._holding and self._model_died is None:
                self._cv.wait()
            if self._slot is not None:
                prepared, self._slot = self._slot, None
                self._running = True
                self._cv.notify_all()  # the slot is free
                return prepared
        batch = self._queue.take(self._select, self._expire)
        if batch is None:
            return None
        with self._cv:
            self._running = True
            self._cv.notify_all()  # the prefetcher may look ahead now
        return batch

    def start(self, requests: list[Request]) -> list[Request]:
        """Start held requests (the model runs them now); return those still to run.

        Cancelled ones are dropped; ones drained meanwhile (by stop or a broken
        host) are answered by whoever drained them; ones whose deadline passed
        go to ``expire``.
        """
        with self._cv:
            held = self._held
            # A request no longer held was discarded or drained (and answered) meanwhile.
            still_held = [r for r in requests if held.pop(r, False) is None]
        self._queue.release(len(still_held))
        expired: list[Request] = []
        batch = start_requests(still_held, time.monotonic(), expired)
        for request in expired:
            self._expire(request)
        return batch

    def ran(self) -> None:
        """The model finished its batch: the prefetcher stops taking ahead.

        Called by the model thread, the only one that sets ``_running``, so a
        second call after the first (the worker calls it once per batch, and
        ``Worker._run`` early when it scatters inline) takes no lock.
        """
        if self._running:
            with self._cv:
                self._running = False

    def answer_later(self, requests: list[Request], outputs: Any, context: Any) -> bool:
        """Hand a finished batch over to be answered on this thread, if a prepared batch
        waits (the model runs it meanwhile); ``False``: answer it yourself.

        This thread then waits on ``_cv`` (the slot is full), and :meth:`next`,
        which the model thread calls next, wakes it: one wake-up per batch
        answers this batch and starts looking ahead for the one after.
        """
        with self._cv:
            if self._slot is None:
                return False
            self._outbox.append((requests, outputs, context))
            return True

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

    # ------------------------------------------------------------------ the scheduler's side
    def discard(self, request: Request) -> bool:
        """Drop a held request whose caller gave up; whether it was held."""
        with self._cv:
            if self._held.pop(request, False) is not None:
                return False
        self._queue.release(1)
        return True

    def drain(self) -> list[Request]:
        """Remove and return every held request."""
        with self._cv:
            held = list(self._held)
            self._held.clear()
        self._queue.release(len(held))
        return held

    # ------------------------------------------------------------------ prefetcher thread
    def _loop(self) -> None:
        try:
            while (batch := self._take_ahead()) is not None:
                prepared = self._prepare(batch)
                with self._cv:
                    if self._model_died is not None:
                        return  # the host is broken; it drains what is held
                    self._slot = prepared
                    self._holding = False
                    self._cv.notify_all()
        except BaseException as error:  # noqa: BLE001 - a dying prefetcher must fail every caller
            self._on_fatal(error, [])  # breaks the host, which drains what is held
        finally:
            with self._cv:
                self._holding = False  # nothing more comes: a waiting model thread takes itself
                self._cv.notify_all()
            self._answer_handed()  # whatever else happened, batches that ran are answered

    def _answer_handed(self) -> None:
        """Answer the batches the model thread handed over (see :meth:`answer_later`)."""
        while True:
            with self._cv:
                if not self._outbox:
                    return
                requests, outputs, context = self._outbox.pop(0)
            try:
                self._answer(requests, outputs, context)
            except BaseException as error:  # noqa: BLE001 - e.g. SystemExit from unbatch
                self._on_fatal(error, requests)  # the host is broken; answer the rest anyway

    def _take_ahead(self) -> list[Request] | None:
        """Wait until a full batch waits and the model runs; hold it. ``None``: the end.

        It waits on the queue (for a full batch's worth) while nothing else can
        happen, and on ``_cv`` only while the slot is full (the model thread
        may hand a batch over) or while enough wait for an idle model (whose
        own thread takes them): a lone caller's request wakes nothing here.
        """
        queue = self._queue
        while True:
            self._answer_handed()
            with self._cv:
                while self._slot is not None and not self._done() and not self._outbox:
                    self._cv.wait()  # next() takes the slot (and wakes this thread)
                if self._done():
                    return None
                if self._outbox:
                    continue
            if not queue.wait_for(self._ahead_at or self._least()):
                return None  # closed: the model thread drains what is left
            with self._cv:  # and the model cannot turn idle while this takes
                while not self._running and not self._done() and not self._outbox:
                    self._cv.wait()  # the model is idle: its thread takes what waits
                if self._done():
                    return None
                if self._outbox:
                    continue
                batch = queue.take(self._choose, None, wait=False)
                if batch is None:
                    return None  # closed and empty
                if batch:
                    self._held.update(dict.fromkeys(batch))
                    self._holding = True
                    return batch

    def _select(self, waiting: list[Request], now_s: float) -> Selection:
        """Under the queue's lock: what the batcher selects for an idle model, and why."""
        limits = self._limits()
        return _with_reason(self._batcher, waiting, self._batcher.select(waiting, limits, now_s),
                            limits, now_s)

    def _choose(self, waiting: list[Request], now_s: float) -> Selection:
        """Under the queue's lock: a full batch that serves the oldest request, or nothing."""
        current = self._limits()
        if current.max_batch_tokens is None and len(waiting) < current.full_size:
            selection = None  # too few requests for a full batch
        else:
            busy = dataclasses.replace(current, model_busy=True)
            selection = self._batcher.select(waiting, busy, now_s)
        if selection is not None and 0 in selection.indices:
            return _with_reason(self._batcher, waiting, selection, busy, now_s)
        # Nothing full serves the oldest yet: look again once a few more came.
        self._ahead_at = max(len(waiting) + max(1, current.full_size // 4), self._least())
        return _NOTHING

    def _least(self) -> int:
        """The fewest waiting requests that can make a full batch (a lone caller's request
        wakes nobody here: it is the model thread's)."""
        current = self._limits()
        return current.full_size if current.max_batch_tokens is None else 1

    def _done(self) -> bool:
        return self._stopped or self._model_died is not None


def _with_reason(batcher: Batcher, waiting: list[Request], selection: Selection,
                 limits: BatchLimits, now_s: float) -> Selection:
    """``selection`` with its start reason (``Batcher.start_reason``), once per batch."""
    if not selection.indices or selection.reason is not None:
        return selection
    reason = batcher.start_reason(waiting, selection, limits, now_s)
    return dataclasses.replace(selection, reason=reason)
