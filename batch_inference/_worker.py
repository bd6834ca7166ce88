"""The worker: runs batches on one model replica and hands results back."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ._pipeline import Prefetcher, Prepared
from ._request import Request, settle
from .batcher.base import Batcher
from .errors import OutputMismatchError
from .stats import StatsRecorder


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an out-of-memory error (CUDA, MPS or host memory)."""
    return (
        isinstance(error, MemoryError)
        or type(error).__name__ == "OutOfMemoryError"
        or (isinstance(error, RuntimeError) and "out of memory" in str(error).lower())
    )


class Scatter:
    """Splits outputs and settles futures, inline or on its own thread.

    A worker whose queue still holds requests hands the finished batch here
    and starts the next batch at once; an idle worker scatters inline, which
    is quicker for a lone caller.
    """

    def __init__(
        self,
        batcher: Batcher,
        stats: StatsRecorder,
        on_fatal: Callable[[BaseException, list[Request]], None] | None = None,
    ) -> None:
        self._batcher = batcher
        self._stats = stats
        self._on_fatal = on_fatal
        self._inbox: queue.SimpleQueue[tuple | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="batch_inference-scatter",
                                        daemon=True)
        self._thread.start()

    def later(self, requests: list[Request], outputs: Any, context: Any) -> None:
        self._inbox.put((requests, outputs, context))

    def now(self, requests: list[Request], outputs: Any, context: Any) -> None:
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

    def _loop(self) -> None:
        while (item := self._inbox.get()) is not None:
            try:
                self.now(*item)
            except BaseException as error:  # noqa: BLE001 - e.g. SystemExit from unbatch
                # Keep scattering the batches behind it, but the host is broken.
                if self._on_fatal is None:
                    self.fail(item[0], error)
                else:
                    self._on_fatal(error, item[0])

    def close(self) -> None:
        self._inbox.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join()


class Worker:
    """One model replica fed from the shared queue, on its own thread.

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
        host: Any,
    ) -> None:
        self.index = index
        self._predict = predict_batch
        self._device = device
        self._host = host
        self.thread = threading.Thread(
            target=self._loop, name=f"batch_inference-worker-{index}", daemon=True
        )
        self._prefetcher = Prefetcher(
            host._queue, host.batcher, host._current_limits, host._expire, self._prepare,
            host._break, name=f"batch_inference-prefetch-{index}",
        )

    def _loop(self) -> None:
        host = self._host
        prefetcher = self._prefetcher
        batch: list[Request] = []
        try:
            prefetcher.thread.start()
            while (item := prefetcher.next()) is not None:
                if isinstance(item, Prepared):  # taken ahead: start it now
                    batch = host._queue.start(item.requests, host._expire)
                    prepared = item
                    if batch and len(batch) < len(item.requests):  # some were cancelled
                        prepared = self._prepare(batch)
                else:  # taken by this thread, already started
                    batch = item
                    prepared = self._prepare(batch)
                if batch:
                    self._run(prepared, retry=False)
                batch = []
                prefetcher.ran()
            prefetcher.stop()
        except BaseException as error:  # noqa: BLE001 - a dying worker must fail every caller
            prefetcher.model_died(error)
            host._break(error, batch)

    def _prepare(self, requests: list[Request]) -> Prepared:
        """Gather, pad and stack the requests, and copy them to the device."""
        try:
            args, context = self._host.batcher.batch([r.args for r in requests])
            if self._device is not None:
                args = _to_device(args, self._device)
        except Exception as error:
            return Prepared(requests, error=error)
        return Prepared(requests, args, context)

    def _execute(self, requests: list[Request], retry: bool) -> None:
        self._run(self._prepare(requests), retry)

    def _run(self, prepared: Prepared, retry: bool) -> None:
        host = self._host
        requests = prepared.requests
        started_s = time.monotonic()
        try:
            if prepared.error is not None:
                raise prepared.error
            outputs = self._host.batcher.run(self._predict, prepared.args)
        except Exception as error:
            self._record(requests, started_s, retry)
            self._recover(requests, error)
            return
        self._record(requests, started_s, retry)
        context = prepared.context
        if not retry and self._prefetcher.has_next():
            host._scatter.later(requests, outputs, context)  # the next batch is ready to run
        else:
            if not retry:  # the model is idle: the prefetcher stops looking ahead
                self._prefetcher.ran()
            host._scatter.now(requests, outputs, context)

    def _record(self, requests: list[Request], started_s: float, retry: bool) -> None:
        infos = [r.info for r in requests]
        self._host._stats.batch(
            size=len(requests),
            real=sum(i.rows * i.length for i in infos),
            padded=self._host.batcher.padded_tokens(infos),
            waits=() if retry else [started_s - r.enqueued_s for r in requests],
            model_s=time.monotonic() - started_s,
            retry=retry,
        )

    def _recover(self, requests: list[Request], error: Exception) -> None:
        """Split a failed batch until the failing requests stand alone.

        A batch of n requests costs at most 2n - 2 extra ``predict_batch``
        calls (every split makes at least two parts); only requests that fail
        on their own get the error. After an out-of-memory error the parts are
        at most the (lowered) batch limit, re-read before each part.
        """
        host = self._host
        oom = is_out_of_memory(error)
        if oom:
            host._lower_batch_limit(len(requests))
        if len(requests) == 1 or not (host.isolate_failures or oom):
            host._scatter.fail(requests, error)
            return
        # A retry is a new batch: requests whose deadline has passed are not run again.
        now_s = time.monotonic()
        expired = [r for r in requests if r.deadline_s is not None and r.deadline_s <= now_s]
        if expired:
            for request in expired:
                host._expire(request)
            requests = [r for r in requests if r not in expired]
            if not requests:
                return
        if len(requests) == 1:  # alone after expiry: it failed with others, so try it alone
            self._execute(requests, retry=True)
            return
        half = (len(requests) + 1) // 2
        start = 0
        while start < len(requests):
            size = max(1, min(host.batch_limit, half)) if oom else half
            self._execute(requests[start : start + size], retry=True)
            start += size


def _to_device(args: Any, device: Any) -> Any:
    """``args`` with every tensor moved to ``device``, through nested tuples and lists.

    A batcher's ``batch`` gives one tuple of arguments, or (a ``MultiBatcher``) a
    list of such tuples; the structure is kept, anything that is not a tensor
    is passed through.
    """
    if isinstance(args, (tuple, list)):
        moved = [_to_device(a, device) for a in args]
        if hasattr(args, "_fields"):  # a namedtuple takes its fields positionally
            return type(args)(*moved)
        return type(args)(moved)
    if hasattr(args, "to") and hasattr(args, "device"):
        return args.to(device, non_blocking=True)
    return args
