"""ModelHost: many callers, one model (or one per device), dynamic batching in between."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

from ._checks import positional_range
from ._future import LightFuture, give_up_if_cancelled
from ._lifecycle import HostLifecycle
from ._request import make_request
from ._scheduler import Scheduler
from ._settings import HostSettings
from .batcher.base import Batcher, BatchLimits
from .errors import ConfigurationError, HostNotRunningError
from .stats import HostStats, StatsRecorder

__all__ = ["ModelHost"]


class ModelHost(HostLifecycle):
    """Serve ``predict_batch`` of a model to many concurrent callers.

    Callers send one request each (:meth:`predict` from threads,
    :meth:`predict_async` from asyncio tasks); a worker thread groups waiting
    requests into batches, calls ``predict_batch`` once per batch and hands
    every caller its own slice of the output.

    Its lifecycle is every host's: :meth:`start`
    on a started host raises
    :class:`~batch_inference.errors.HostAlreadyRunningError`; :meth:`stop`
    drains (or cancels) and may be followed by a new :meth:`start`;
    :attr:`running`, :attr:`broken`, ``with`` and ``async with`` as there.

    Parameters
    ----------
    model_cls:
        A class with a ``predict_batch`` method; built by :meth:`start` with
        ``model_args``/``model_kwargs`` (once per worker).
    model_obj:
        An already built model, used instead of ``model_cls`` (shared by all
        workers).
    batcher:
        A :class:`~batch_inference.batcher.Batcher`; default
        :class:`~batch_inference.batcher.ConcatBatcher`.
    max_batch_size:
        Most requests in one ``predict_batch`` call.
    max_delay_s:
        Longest a request may be held back so that more requests can join its
        batch. ``0`` (default): a batch starts as soon as the model is idle.
    max_batch_tokens:
        Most padded tokens (rows x padded length) in one batch, or ``None``.
    num_workers:
        Model replicas, each on its own thread, all fed from one queue.
    devices:
        One device per worker (e.g. ``["cuda:0", "cuda:1"]``); overrides
        ``num_workers``. ``model_cls`` is built with ``device=<device>`` and the
        batched tensors are moved to that device before ``predict_batch``: on
        a CUDA device through reused pinned host buffers on a copy stream of
        the worker's own, while the previous batch runs. ``model_obj`` (one
        object) serves one device only.
    output_device:
        Where callers get their results, e.g. ``"cpu"``: the batch's outputs
        are copied there once per batch, before they are split, so that no
        caller holds device memory. ``None`` (default): results stay where the
        model left them, and each caller's result is a view into the batch's
        output, which stays in (GPU) memory while any caller keeps its slice.
    max_queue_size:
        Most requests waiting; beyond it :meth:`predict` raises
        :class:`~batch_inference.errors.QueueFullError` at once, or, with
        ``wait_for_queue=True``, waits for room until its timeout (then
        ``QueueFullError``). ``None``: unbounded.
    default_timeout_s:
        Deadline for calls that give no ``timeout``; ``None``: no deadline.
    isolate_failures:
        When ``predict_batch`` raises on a batch, split it and retry the parts
        until only the failing requests get the exception (at most ``2n - 2``
        extra calls for a batch of ``n``); each gets the exception its own
        retry raised, with its traceback. ``False``: every request of the
        batch gets the one exception, after one call. An out-of-memory error
        (``torch.cuda.OutOfMemoryError``, ``MemoryError``, "out of memory")
        is always retried in smaller parts, and lowers :attr:`batch_limit` to
        half the failed batch for the rest of the host's life.
    wait_ms, wait_n:
        batch-inference 1.0 names: ``wait_ms`` is ``max_delay_s`` in
        milliseconds; ``wait_n`` dispatches a batch at once when that many
        requests wait, even within the delay.
    model_args, model_kwargs:
        Arguments for ``model_cls``.
    """

    def __init__(
        self,
        model_cls: type | None = None,
        model_obj: Any = None,
        batcher: Batcher | None = None,
        max_batch_size: int = 32,
        *,
        max_delay_s: float = 0.0,
        max_batch_tokens: int | None = None,
        num_workers: int = 1,
        devices: Sequence[Any] | None = None,
        max_queue_size: int | None = None,
        default_timeout_s: float | None = None,
        isolate_failures: bool = True,
        output_device: Any = None,
        wait_ms: float | None = None,
        wait_n: int | None = None,
        model_args: Sequence[Any] = (),
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self._configure(
            HostSettings.build(
                batcher=batcher, max_batch_size=max_batch_size, max_delay_s=max_delay_s,
                max_batch_tokens=max_batch_tokens, num_workers=num_workers, devices=devices,
                max_queue_size=max_queue_size, default_timeout_s=default_timeout_s,
                isolate_failures=isolate_failures, output_device=output_device,
                wait_ms=wait_ms, wait_n=wait_n,
            ),
            model_cls, model_obj, model_args, model_kwargs,
        )

    @classmethod
    def from_settings(
        cls,
        settings: HostSettings,
        model_cls: type | None = None,
        model_obj: Any = None,
        model_args: Sequence[Any] = (),
        model_kwargs: dict[str, Any] | None = None,
    ) -> ModelHost:
        """A host with settings checked earlier (``@batching`` and the remote host use it).

        ``settings`` is a frozen ``HostSettings``
        (e.g. another host's :attr:`settings`); it is used as it is.
        """
        host = cls.__new__(cls)
        host._configure(settings, model_cls, model_obj, model_args, model_kwargs)
        return host

    def _configure(self, settings: HostSettings, model_cls: type | None, model_obj: Any,
                   model_args: Sequence[Any], model_kwargs: dict[str, Any] | None) -> None:
        if (model_cls is None) == (model_obj is None):
            raise ConfigurationError("give exactly one of model_cls and model_obj")
        target = model_cls if model_cls is not None else model_obj
        if not callable(getattr(target, "predict_batch", None)):
            raise ConfigurationError(f"{target!r} has no predict_batch method")
        if (model_obj is not None and settings.devices is not None
                and len({str(d) for d in settings.devices}) > 1):
            raise ConfigurationError(
                f"model_obj is one object, so it serves one device, got "
                f"devices={list(settings.devices)!r}: give model_cls to build one model per device"
            )
        super().__init__()
        self._settings = settings
        self.model_cls = model_cls
        self.model_obj = model_obj
        self.model_args: tuple[Any, ...] = tuple(model_args)
        self.model_kwargs: dict[str, Any] = dict(model_kwargs or {})
        self._arg_range = positional_range(target.predict_batch, bound=model_obj is not None)
        self._models: list[Any] = []
        self._stats = StatsRecorder()
        # The latest start's scheduler (kept after stop() for stats, broken and its limits).
        self._scheduler: Scheduler | None = None
        self._accepted_before = 0  # requests accepted by earlier starts

    # ------------------------------------------------------------------ settings (read-only)
    @property
    def settings(self) -> HostSettings:
        """Every setting, as checked once when the host (or its decorator) was made."""
        return self._settings

    @property
    def batcher(self) -> Batcher:
        return self._settings.batcher

    @property
    def max_batch_size(self) -> int:
        """Most requests in one ``predict_batch`` call, as configured (see :attr:`batch_limit`)."""
        return self._settings.max_batch_size

    @property
    def max_delay_s(self) -> float:
        """Longest a request may be held back for companions, as configured."""
        return self._settings.max_delay_s

    @property
    def max_batch_tokens(self) -> int | None:
        """Most padded tokens in one batch, as configured, or ``None``."""
        return self._settings.max_batch_tokens

    @property
    def num_workers(self) -> int:
        return self._settings.num_workers

    @property
    def devices(self) -> list[Any] | None:
        devices = self._settings.devices
        return None if devices is None else list(devices)

    @property
    def max_queue_size(self) -> int | None:
        return self._settings.max_queue_size

    @property
    def default_timeout_s(self) -> float | None:
        return self._settings.default_timeout_s

    @property
    def isolate_failures(self) -> bool:
        return self._settings.isolate_failures

    @property
    def output_device(self) -> Any:
        return self._settings.output_device

    @property
    def models(self) -> tuple[Any, ...]:
        """The model objects the workers serve, one per worker (built by the first
        :meth:`start`; empty before it). ``model_obj`` stays as it was given."""
        return tuple(self._models)

    def __call__(self, *model_args: Any, **model_kwargs: Any) -> ModelHost:
        """Set the model's constructor arguments (batch-inference 1.0 style); returns ``self``."""
        self.model_args, self.model_kwargs = model_args, model_kwargs
        return self

    # ------------------------------------------------------------------ lifecycle
    # start(), stop(), running, broken and the context managers: HostLifecycle.
    def _describe(self) -> str:
        target = self.model_cls if self.model_cls is not None else type(self.model_obj)
        return f"the host serving {target.__name__}"

    def _run_broken(self) -> bool:
        scheduler = self._scheduler
        return scheduler is not None and scheduler.broken is not None

    def _start_run(self) -> None:
        """Build the model(s) (once) and start a new scheduler with its workers."""
        if not self._models:
            self._models = self._build_models()
        previous = self._scheduler
        limits: BatchLimits = self._settings.limits
        if previous is not None:  # a lowered batch limit holds for the host's life
            self._accepted_before += previous.queue.accepted
            limits = previous.limits()
        settings = self._settings
        devices = settings.devices or [None] * settings.num_workers
        scheduler = Scheduler(
            [(model.predict_batch, device) for model, device in zip(self._models, devices)],
            batcher=settings.batcher, limits=limits, stats=self._stats,
            isolate_failures=settings.isolate_failures, max_queue_size=settings.max_queue_size,
            output_device=settings.output_device,
        )
        scheduler.start()
        self._scheduler = scheduler

    def _build_models(self) -> list[Any]:
        if self.model_obj is not None:
            return [self.model_obj] * self.num_workers
        assert self.model_cls is not None
        if self.devices is None:
            return [self.model_cls(*self.model_args, **self.model_kwargs)
                    for _ in range(self.num_workers)]
        return [self.model_cls(*self.model_args, device=device, **self.model_kwargs)
                for device in self.devices]

    def _stop_run(self, cancel_pending: bool, timeout: float | None) -> bool:
        """Close the scheduler's queue (cancelling what waits if asked) and join its threads.

        ``False`` also when called from ``predict_batch``: that thread goes on
        draining the queue; the threads end by themselves once they have
        answered every accepted request, and a later start never shares them.
        """
        scheduler = self._scheduler
        assert scheduler is not None
        return scheduler.stop(cancel_pending, timeout)

    # ------------------------------------------------------------------ introspection
    @property
    def batch_limit(self) -> int:
        """The current ``max_batch_size`` (lowered after out-of-memory errors)."""
        scheduler = self._scheduler
        return (self._settings if scheduler is None else scheduler.limits()).max_batch_size

    def stats(self) -> HostStats:
        """A snapshot of counters, batch sizes, padding and latency percentiles.

        Counts run across restarts; ``queue_depth`` is the latest start's.
        """
        scheduler = self._scheduler
        if scheduler is None:
            return self._stats.snapshot(self._accepted_before, 0, self.batch_limit)
        queue = scheduler.queue
        return self._stats.snapshot(self._accepted_before + queue.accepted, len(queue),
                                    scheduler.limits().max_batch_size)

    # ================================================================== requests: the one door
    # Each call makes a checked request (``_request.make_request``) with the future its
    # caller waits on, and hands it to the current start's Scheduler, which queues it and
    # waits for the outcome (``_scheduler.py``). Nothing else puts a request on the queue.
    def predict(
        self, *args: Any, timeout: float | None = None, wait_for_queue: bool = False
    ) -> Any:
        """Run one request through the model, batched with others; block for its result.

        Parameters
        ----------
        *args:
            The request: one value per argument of ``predict_batch``.
        timeout:
            Seconds to wait at most (default: the host's ``default_timeout_s``);
            then :class:`~batch_inference.errors.RequestTimeoutError` is raised
            and the request is removed if it has not started.
        wait_for_queue:
            With a full queue, wait for room (within ``timeout``) instead of
            raising :class:`~batch_inference.errors.QueueFullError` at once.
        """
        request = make_request(args, timeout, LightFuture(), self.batcher, self._arg_range,
                               self.default_timeout_s)
        return self._door().predict(request, wait_for_queue)

    def submit(
        self, *args: Any, timeout: float | None = None, wait_for_queue: bool = False
    ) -> Future[Any]:
        """Queue one request and return its :class:`concurrent.futures.Future`.

        The future's result is what :meth:`predict` returns. Cancelling it
        before its batch starts removes the request from the queue (it is
        never run); ``cancel()`` returns ``False`` once its batch has started.
        A request whose ``timeout`` (or ``default_timeout_s``) passes before its
        batch starts is not run: its future gets
        :class:`~batch_inference.errors.RequestTimeoutError` when a worker
        reaches it. To stop waiting at the deadline itself, wait with
        ``future.result(timeout)`` and ``cancel()`` (or use :meth:`predict`).
        """
        request = make_request(args, timeout, Future(), self.batcher, self._arg_range,
                               self.default_timeout_s)
        return self._door().submit(request, wait_for_queue)

    async def predict_async(
        self, *args: Any, timeout: float | None = None, wait_for_queue: bool = False
    ) -> Any:
        """Awaitable :meth:`predict` for asyncio callers; never blocks the event loop.

        Cancelling the awaiting task removes the request if it has not started.
        """
        future = LightFuture(asyncio.get_running_loop())
        request = make_request(args, timeout, future, self.batcher, self._arg_range,
                               self.default_timeout_s)
        scheduler = self._door()
        if wait_for_queue or request.deadline_s is not None:
            return await scheduler.predict_async(request, wait_for_queue)
        # No deadline, no wait for room: the loop future is awaited in this frame.
        scheduler.put(request, False)
        loop_future = future.loop_future
        assert loop_future is not None
        try:
            return await loop_future
        except BaseException:
            give_up_if_cancelled(loop_future, scheduler.abandon, request)
            raise

    def _door(self) -> Scheduler:
        """The latest start's scheduler (a stopped one refuses the request)."""
        scheduler = self._scheduler
        if scheduler is None:
            raise HostNotRunningError(
                "the host is not running: call start() (or use `with host:`) before predict"
            )
        return scheduler

    # ------------------------------------------------------------------ whole datasets
    def map(
        self,
        *iterables: Iterable[Any],
        window: int | None = None,
        return_exceptions: bool = False,
        progress: bool = False,
        timeout: float | None = None,
    ) -> Iterator[Any]:
        """Run a whole dataset through the host; yield the results in input order.

        Shaped like :meth:`concurrent.futures.Executor.map`: the ``i``-th items
        of ``iterables`` are the ``i``-th request's :meth:`predict` arguments.
        The inputs are read lazily (they may be far larger than memory, or
        endless), at most ``window`` requests ahead of the result being
        waited for; each read is ordered for the batcher (by its key, then by
        length) and submitted at once, so the batcher chooses among all of
        them. Nothing is read before the first result is asked for.

        Parameters
        ----------
        *iterables:
            One iterable per argument of ``predict_batch``.
        window:
            Most requests out at once (queued, running, or done and waiting
            for an earlier result); ``None``: 16 x ``max_batch_size``. A larger
            window sorts more requests together (less padding) and holds more
            results in memory.
        return_exceptions:
            ``False`` (default): a failed request's exception is raised when
            its turn comes (every earlier result has been yielded), and the
            requests not yet started are cancelled. ``True``: the exception is
            yielded in its place and the map goes on.
        progress:
            Show a ``tqdm`` bar (items, items/s) on stderr. Needs ``tqdm``
            (:class:`~batch_inference.errors.ConfigurationError` without it).
        timeout:
            Each request's timeout, as for :meth:`predict` (counted from when
            the request is sent, one window ahead).

        Yields
        ------
        Any
            What :meth:`predict` returns for each item, in input order.

        An exception the inputs raise is raised after the results of every
        item read before it; so is :class:`~batch_inference.errors.HostNotRunningError`
        when the host stops midway. Closing the generator (``break``, ``close()``)
        cancels every request that has not started.
        """
        from ._map import map_requests

        return map_requests(
            lambda *args: self.submit(*args, timeout=timeout, wait_for_queue=True),
            self.batcher, iterables, window=window, max_batch_size=self.max_batch_size,
            return_exceptions=return_exceptions, progress=progress,
        )

    def map_async(
        self,
        *iterables: Iterable[Any] | AsyncIterable[Any],
        window: int | None = None,
        return_exceptions: bool = False,
        progress: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[Any]:
        """:meth:`map` for asyncio: ``async for result in host.map_async(xs): ...``.

        The same settings and guarantees as :meth:`map`; each iterable may be
        asynchronous. Each request is a :meth:`predict_async` call in a task of
        the running loop (a full queue is waited for without blocking it).
        Cancelling the iterating task, or ``aclose()`` (e.g.
        ``contextlib.aclosing``), cancels what has not started.
        """
        from ._map import map_requests_async

        def send(*args: Any) -> asyncio.Task[Any]:
            return asyncio.ensure_future(
                self.predict_async(*args, timeout=timeout, wait_for_queue=True))

        return map_requests_async(
            send,
            self.batcher, iterables, window=window, max_batch_size=self.max_batch_size,
            return_exceptions=return_exceptions, progress=progress,
        )
