"""The worker: runs batches on one model replica and hands results back.

A :class:`Worker` is built by a :class:`~batch_inference._scheduler.Scheduler`
and handed only what it uses: its model's ``predict_batch`` and device, the
scheduler's queue, batcher, :class:`Scatter` and stats, and a narrow
:class:`SchedulerPort` (the current limits, expiry, lowering the limit after
an out-of-memory error, and failing the scheduler when the worker dies).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ._devices import to_output_device
from ._memory import release_after_oom
from ._pipeline import Prefetcher, Prepared
from ._queue import RequestQueue
from ._request import Request, settle
from ._staging import make_stager
from .batcher.base import Batcher, BatchLimits
from .errors import OutputMismatchError
from .stats import StatsRecorder


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an out-of-memory error (CUDA, MPS or host memory)."""
    return (
        isinstance(error, MemoryError)
        or type(error).__name__ == "OutOfMemoryError"
        or (isinstance(error, RuntimeError) and "out of memory" in str(error).lower())
    )


class SchedulerPort(Protocol):
    """What a worker may ask of the scheduler that made it."""

    def limits(self) -> BatchLimits:
        """The current limits (``max_batch_size`` lowered after out-of-memory errors)."""
        ...

    def expire(self, request: Request) -> None:
        """Answer a request whose deadline passed before it ran."""
        ...

    def lower_limit(self, failed_size: int) -> None:
        """A batch of ``failed_size`` requests ran out of memory: lower the batch limit."""
        ...

    def fail(self, cause: BaseException, batch: list[Request]) -> None:
        """A thread died of ``cause``: fail ``batch`` and everything pending; refuse more."""
        ...



class Scatter:
    """Splits a batch's outputs and settles its callers' futures.

    Called by the model thread when it is idle (quicker for a lone caller),
    or by its worker's prefetch thread while the model runs the next batch.
    """

    def __init__(self, batcher: Batcher, stats: StatsRecorder) -> None:
        self._batcher = batcher
        self._stats = stats

    def now(self, requests: list[Request], outputs: Any, context: Any) -> None:
        """Answer ``requests``; a ``BaseException`` of ``unbatch`` (e.g. SystemExit) propagates."""
        try:
            results = self._batcher.unbatch(outputs, context)
            if len(results) != len(requests):
                raise OutputMismatchError(
                    f"{type(self._batcher).__name__}.unbatch returned {len(results)} results "
                    f"for a batch of {len(requests)} requests"
                )
        except Exception as error:  # noqa: BLE001 - every caller of the batch gets it
            self.fail(requests, error)
            return
        settle([(r, value, False) for r, value in zip(requests, results)])
        self._stats.count("completed", len(requests))

    def fail(self, requests: Sequence[Request], error: BaseException, kind: str = "failed") -> None:
        settle([(r, error, True) for r in requests])
        self._stats.count(kind, len(requests))


class Worker:
    """One model replica fed from the scheduler's queue, on its own thread.

    Its :class:`~batch_inference._pipeline.Prefetcher` forms and prepares a
    full next batch while the model runs the current one; when nothing is
    prepared, ``thread`` (the model thread) takes and prepares the next batch
    itself.
    """

    def __init__(
        self,
        index: int,
        predict_batch: Callable[..., Any],
        device: Any,
        *,
        queue: RequestQueue,
        batcher: Batcher,
        scatter: Scatter,
        stats: StatsRecorder,
        isolate_failures: bool,
        scheduler: SchedulerPort,
        output_device: Any = None,
    ) -> None:
        self.index = index
        self._predict = predict_batch
        self._stager = make_stager(device)  # pinned staging on a CUDA device, .to() elsewhere
        self._output_device = output_device
        self._batcher = batcher
        self._scatter = scatter
        self._stats = stats
        self._isolate_failures = isolate_failures
        self._scheduler = scheduler
        self.thread = threading.Thread(
            target=self._loop, name=f"batch_inference-worker-{index}", daemon=True
        )
        self.prefetcher = Prefetcher(
            queue, batcher, scheduler.limits, scheduler.expire, self._prepare, scatter.now,
            scheduler.fail, name=f"batch_inference-prefetch-{index}",
        )

    @property
    def threads(self) -> tuple[threading.Thread, threading.Thread]:
        """The model thread and the prefetch thread."""
        return self.thread, self.prefetcher.thread

    def start(self) -> None:
        self.prefetcher.thread.start()
        self.thread.start()

    def _loop(self) -> None:
        scheduler = self._scheduler
        prefetcher = self.prefetcher
        batch: list[Request] = []
        try:
            while (item := prefetcher.next()) is not None:
                if isinstance(item, Prepared):  # taken ahead: start it now
                    batch = prefetcher.start(item.requests)
                    prepared = item
                    if batch and len(batch) < len(item.requests):  # some were cancelled
                        prepared = self._prepare(batch)
                else:  # taken by this thread, already started
                    batch = item
                    prepared = self._prepare(batch)
                item = None  # the prepared batch is referenced from here on by ``prepared`` alone
                if batch:
                    self._run(prepared, retry=False)
                batch, prepared = [], None
                prefetcher.ran()
            prefetcher.stop()
        except BaseException as error:  # noqa: BLE001 - a dying worker must fail every caller
            prefetcher.model_died(error)
            scheduler.fail(error, batch)

    def _prepare(self, requests: list[Request]) -> Prepared:
        """Gather, pad and stack the requests, and stage them on the device."""
        try:
            args, context = self._batcher.batch([r.args for r in requests])
            args, ready = self._stager.stage(args)
        except Exception as error:
            return Prepared(requests, error=error)
        return Prepared(requests, args, context, ready=ready)

    def _execute(self, requests: list[Request], retry: bool) -> None:
        self._run(self._prepare(requests), retry)

    def _run(self, prepared: Prepared, retry: bool) -> None:
        requests = prepared.requests
        started_s = time.monotonic()
        try:
            if prepared.error is not None:
                raise prepared.error
            prepared.ready.wait()  # on CUDA: the model's stream waits for the batch's copy
            outputs = self._batcher.run(self._predict, prepared.args)
            if self._output_device is not None:  # one copy per batch, before it is split
                outputs = to_output_device(outputs, self._output_device)
        except Exception as error:
            self._record(requests, started_s, retry)
            if is_out_of_memory(error):  # free the failed batch before the smaller retries
                prepared.args = ()
                release_after_oom(error)
            self._recover(requests, error)
            return
        self._record(requests, started_s, retry)
        context = prepared.context
        if not retry and self.prefetcher.answer_later(requests, outputs, context):
            return  # the next batch is ready to run: the prefetch thread answers these meanwhile
        if not retry:  # the model is idle: the prefetcher stops looking ahead
            self.prefetcher.ran()
        self._scatter.now(requests, outputs, context)

    def _record(self, requests: list[Request], started_s: float, retry: bool) -> None:
        infos = [r.info for r in requests]
        self._stats.batch(
            size=len(requests),
            real=sum(i.rows * i.length for i in infos),
            padded=self._batcher.padded_tokens(infos),
            waits=() if retry else [started_s - r.enqueued_s for r in requests],
            model_s=time.monotonic() - started_s,
            retry=retry,
            reason=requests[0].start_reason,
        )

    def _recover(self, requests: list[Request], error: Exception) -> None:
        """Split a failed batch until the failing requests stand alone.

        A batch of n requests costs at most 2n - 2 extra ``predict_batch``
        calls (every split makes at least two parts); only requests that fail
        on their own get the error. After an out-of-memory error the parts are
        at most the (lowered) batch limit, re-read before each part.
        """
        scheduler = self._scheduler
        oom = is_out_of_memory(error)
        if oom:
            scheduler.lower_limit(len(requests))
        if len(requests) == 1 or not (self._isolate_failures or oom):
            self._scatter.fail(requests, error)
            return
        # A retry is a new batch: requests whose deadline has passed are not run again.
        now_s = time.monotonic()
        expired = [r for r in requests if r.deadline_s is not None and r.deadline_s <= now_s]
        if expired:
            for request in expired:
                scheduler.expire(request)
            requests = [r for r in requests if r not in expired]
            if not requests:
                return
        if len(requests) == 1:  # alone after expiry: it failed with others, so try it alone
            self._execute(requests, retry=True)
            return
        half = (len(requests) + 1) // 2
        start = 0
        while start < len(requests):
            size = max(1, min(scheduler.limits().max_batch_size, half)) if oom else half
            self._execute(requests[start : start + size], retry=True)
            start += size
