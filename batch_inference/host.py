"""ModelHost: many callers, one model (or one per device), dynamic batching in between."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from typing import Any

from ._checks import checked_timeout, non_negative, positional_range, positive_int
from ._devices import as_device
from ._fronts import RequestFronts
from ._scheduler import Scheduler
from .batcher.base import Batcher, BatchLimits
from .batcher.concat_batcher import ConcatBatcher
from .errors import ConfigurationError, HostAlreadyRunningError, InvalidRequestError
from .stats import HostStats, StatsRecorder

__all__ = ["ModelHost"]


class ModelHost(RequestFronts):
    """Serve ``predict_batch`` of a model to many concurrent callers.

    Callers send one request each (:meth:`predict` from threads,
    :meth:`predict_async` from asyncio tasks); a worker thread groups waiting
    requests into batches, calls ``predict_batch`` once per batch and hands
    every caller its own slice of the output.

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
        if (model_cls is None) == (model_obj is None):
            raise ConfigurationError("give exactly one of model_cls and model_obj")
        target = model_cls if model_cls is not None else model_obj
        if not callable(getattr(target, "predict_batch", None)):
            raise ConfigurationError(f"{target!r} has no predict_batch method")
        if wait_ms is not None:
            if max_delay_s:
                raise ConfigurationError("give max_delay_s or wait_ms, not both")
            max_delay_s = non_negative("wait_ms", wait_ms) / 1000.0
        positive_int("max_batch_size", max_batch_size)
        non_negative("max_delay_s", max_delay_s)
        if max_batch_tokens is not None:
            positive_int("max_batch_tokens", max_batch_tokens)
        if wait_n is not None:
            positive_int("wait_n", wait_n)
        if devices is not None:
            if len(devices) == 0:
                raise ConfigurationError("devices must name at least one device, got []")
            if model_obj is not None and len({str(d) for d in devices}) > 1:
                raise ConfigurationError(
                    f"model_obj is one object, so it serves one device, got devices={devices!r}: "
                    "give model_cls to build one model per device"
                )
            num_workers = len(devices)
        positive_int("num_workers", num_workers)
        if max_queue_size is not None:
            positive_int("max_queue_size", max_queue_size)
        if default_timeout_s is not None:
            try:
                default_timeout_s = checked_timeout(default_timeout_s)
            except InvalidRequestError:
                raise ConfigurationError(
                    f"default_timeout_s must be a number of seconds > 0, got {default_timeout_s!r}"
                ) from None
        if batcher is not None and not isinstance(batcher, Batcher):
            raise ConfigurationError(f"batcher must be a Batcher instance, got {batcher!r}")

        self.model_cls = model_cls
        self.model_obj = model_obj
        self.batcher: Batcher = batcher if batcher is not None else ConcatBatcher()
        self.num_workers = num_workers
        self.devices = list(devices) if devices is not None else None
        self.max_queue_size = max_queue_size
        self.default_timeout_s = default_timeout_s
        self.isolate_failures = isolate_failures
        self.output_device = None if output_device is None else as_device(output_device)
        self.model_args: tuple[Any, ...] = tuple(model_args)
        self.model_kwargs: dict[str, Any] = dict(model_kwargs or {})
        # The one source of the batch settings; a Scheduler holds the current (lowered) copy.
        self._limits = BatchLimits(max_batch_size, max_batch_tokens, max_delay_s, wait_n)
        self._arg_range = positional_range(target.predict_batch, bound=model_obj is not None)
        self._models: list[Any] = []
        self._stats = StatsRecorder()
        self._lifecycle = threading.Lock()
        # The latest start's scheduler (kept after stop() for stats and its closed queue).
        self._scheduler: Scheduler | None = None
        self._started = False
        self._accepted_before = 0  # requests accepted by earlier starts

    @property
    def models(self) -> tuple[Any, ...]:
        """The model objects the workers serve, one per worker (built by the first
        :meth:`start`; empty before it). ``model_obj`` stays as it was given."""
        return tuple(self._models)

    @property
    def max_batch_size(self) -> int:
        """Most requests in one ``predict_batch`` call, as configured (see :attr:`batch_limit`)."""
        return self._limits.max_batch_size

    @property
    def max_delay_s(self) -> float:
        """Longest a request may be held back for companions, as configured."""
        return self._limits.max_delay_s

    @property
    def max_batch_tokens(self) -> int | None:
        """Most padded tokens in one batch, as configured, or ``None``."""
        return self._limits.max_batch_tokens

    # ------------------------------------------------------------------ lifecycle
    def __call__(self, *model_args: Any, **model_kwargs: Any) -> ModelHost:
        """Set the model's constructor arguments (batch-inference 1.0 style); returns ``self``."""
        self.model_args, self.model_kwargs = model_args, model_kwargs
        return self

    @property
    def running(self) -> bool:
        """Whether the host accepts requests."""
        scheduler = self._scheduler
        return self._started and scheduler is not None and scheduler.broken is None

    @property
    def broken(self) -> bool:
        """Whether a worker of the latest start died; the host then refuses every request.

        It stays ``True`` after :meth:`stop`, until the next :meth:`start`.
        """
        scheduler = self._scheduler
        return scheduler is not None and scheduler.broken is not None

    def start(self) -> ModelHost:
        """Build the model(s) (once) and start a new scheduler with its workers.

        Raises
        ------
        HostAlreadyRunningError
            The host is running (also a ``RuntimeError``, as batch-inference
            1.0 raises); call :meth:`stop` first.
        """
        with self._lifecycle:
            if self._started:
                raise HostAlreadyRunningError(
                    f"the host serving {self._target_name()} is already running; stop() it first"
                )
            if not self._models:
                self._models = self._build_models()
            previous = self._scheduler
            limits = self._limits
            if previous is not None:  # a lowered batch limit holds for the host's life
                self._accepted_before += previous.queue.accepted
                limits = previous.limits()
            devices = self.devices or [None] * self.num_workers
            scheduler = Scheduler(
                [(model.predict_batch, device) for model, device in zip(self._models, devices)],
                batcher=self.batcher, limits=limits, stats=self._stats,
                isolate_failures=self.isolate_failures, max_queue_size=self.max_queue_size,
                output_device=self.output_device,
            )
            scheduler.start()
            self._scheduler = scheduler
            self._started = True
            return self

    def _target_name(self) -> str:
        target = self.model_cls if self.model_cls is not None else type(self.model_obj)
        return target.__name__

    def _build_models(self) -> list[Any]:
        if self.model_obj is not None:
            return [self.model_obj] * self.num_workers
        assert self.model_cls is not None
        if self.devices is None:
            return [self.model_cls(*self.model_args, **self.model_kwargs)
                    for _ in range(self.num_workers)]
        return [self.model_cls(*self.model_args, device=device, **self.model_kwargs)
                for device in self.devices]

    def stop(self, cancel_pending: bool = False, timeout: float | None = None) -> bool:
        """Stop accepting requests and shut the workers down.

        Parameters
        ----------
        cancel_pending:
            ``False`` (default): finish every accepted request first (drain).
            ``True``: each request that has not started gets
            :class:`~batch_inference.errors.HostStoppedError`.
        timeout:
            Most seconds to wait for the threads; ``None`` waits for them.

        Returns
        -------
        bool
            ``True`` when every thread that the last :meth:`start` made (model,
            prefetch and scatter threads) has ended. ``False`` when the timeout
            ran out first, or when called from ``predict_batch`` (that thread
            goes on draining the queue): the threads still end by themselves
            once they have answered every accepted request, and a later
            :meth:`start` never shares them. Stopping a stopped host returns
            ``True`` at once.
        """
        with self._lifecycle:
            scheduler = self._scheduler
            if not self._started or scheduler is None:
                return True
            self._started = False
            return scheduler.stop(cancel_pending, timeout)

    def __enter__(self) -> ModelHost:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    async def __aenter__(self) -> ModelHost:
        # Building the model can take seconds: keep the event loop serving meanwhile.
        return await asyncio.get_running_loop().run_in_executor(None, self.start)

    async def __aexit__(self, *exc_info: Any) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.stop)

    # ------------------------------------------------------------------ introspection
    @property
    def batch_limit(self) -> int:
        """The current ``max_batch_size`` (lowered after out-of-memory errors)."""
        scheduler = self._scheduler
        return (self._limits if scheduler is None else scheduler.limits()).max_batch_size

    def stats(self) -> HostStats:
        """A snapshot of counters, batch sizes, padding and latency percentiles.

        Counts run across restarts; ``queue_depth`` is the latest start's.
        """
        scheduler = self._scheduler
        if scheduler is None:
            return self._stats.snapshot(self._accepted_before, 0)
        queue = scheduler.queue
        return self._stats.snapshot(self._accepted_before + queue.accepted, len(queue))

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
