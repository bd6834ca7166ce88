"""The asyncio host of batch-inference 1.0, as a thin front over :class:`batch_inference.ModelHost`.

Every awaitable here hands its work to the one host underneath: requests go
through :meth:`batch_inference.ModelHost.predict_async` (the same queue and
scheduler that serve threads), and the blocking parts of starting and stopping
(building the model, joining the workers) run in the event loop's default
executor, so the loop keeps serving other tasks meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import Any

from .._lifecycle import AsyncHostLifecycle
from ..batcher.base import Batcher
from ..errors import ConfigurationError
from ..host import ModelHost as _Host
from ..stats import HostStats

__all__ = ["DEFAULT_WAIT_MS", "DEFAULT_WAIT_N", "ModelHost"]

#: batch-inference 1.0's defaults for its asyncio host, kept so that 1.0 programs behave alike.
DEFAULT_WAIT_MS = 5.0
DEFAULT_WAIT_N = 16


class ModelHost(AsyncHostLifecycle):
    """batch-inference 1.0's ``batch_inference.aio.ModelHost``: awaitable start, predict, stop.

    A 1.0 program runs unchanged::

        host = ModelHost(MyModel, batcher=ConcatBatcher(), max_batch_size=32)(*model_args)
        await host.start()
        y = await host.predict(x)        # from any number of tasks
        await host.stop()

    or ``async with ModelHost(...) as host:``. Its lifecycle (``start``,
    ``stop(cancel_pending, timeout)``, ``running``, ``broken``) is every
    host's, awaited. It is a front over a
    :class:`batch_inference.ModelHost` (:attr:`host`), which does all the
    queueing and batching; threads may call ``host.host.predict`` alongside.

    Parameters
    ----------
    model_cls, model_obj, batcher, max_batch_size, num_workers:
        As for :class:`batch_inference.ModelHost`.
    wait_ms:
        How long (milliseconds) a request may be held back so that more join
        its batch. **Default 5**, 1.0's default for this host (the thread host
        defaults to no wait): a lone caller waits up to 5 ms, in exchange for
        fuller batches. ``0`` starts each batch as soon as the model is idle;
        ``None`` leaves it to ``max_delay_s``. A ``max_delay_s`` given in
        ``host_options`` replaces the default.
    wait_n:
        A batch of this many requests starts at once, even within ``wait_ms``.
        **Default 16**, as in 1.0; above ``max_batch_size`` it means
        ``max_batch_size``.
    event_loop:
        Accepted for 1.0 programs; ``None`` or an event loop. Each call is
        answered on the loop it is awaited in, so the value is not used.
    **host_options:
        Any other keyword of :class:`batch_inference.ModelHost`
        (``max_delay_s``, ``max_batch_tokens``, ``devices``,
        ``default_timeout_s``...).
    """

    def __init__(
        self,
        model_cls: type | None = None,
        model_obj: Any = None,
        batcher: Batcher | None = None,
        max_batch_size: int = 32,
        wait_ms: float | None = DEFAULT_WAIT_MS,
        wait_n: int | None = DEFAULT_WAIT_N,
        num_workers: int = 1,
        event_loop: asyncio.AbstractEventLoop | None = None,
        **host_options: Any,
    ) -> None:
        if event_loop is not None and not isinstance(event_loop, asyncio.AbstractEventLoop):
            raise ConfigurationError(
                f"event_loop must be an asyncio event loop or None, got {event_loop!r}"
            )
        if "max_delay_s" in host_options and wait_ms == DEFAULT_WAIT_MS:
            wait_ms = None  # the explicit setting wins over 1.0's default
        self._host = _Host(
            model_cls,
            model_obj,
            batcher,
            max_batch_size,
            wait_ms=wait_ms,
            wait_n=wait_n,
            num_workers=num_workers,
            **host_options,
        )
        super().__init__(self._host)
        self.wait_ms = wait_ms
        self.wait_n = wait_n
        self.event_loop = event_loop

    # ------------------------------------------------------------------ 1.0's attributes
    @property
    def host(self) -> _Host:
        """The :class:`batch_inference.ModelHost` that does the work."""
        return self._host

    @property
    def model_cls(self) -> type | None:
        return self._host.model_cls

    @property
    def model_obj(self) -> Any:
        """The model: the one given, or (after :meth:`start`) the first one built."""
        host = self._host
        if host.model_obj is not None or not host.models:
            return host.model_obj
        return host.models[0]

    @property
    def batcher(self) -> Batcher:
        return self._host.batcher

    @property
    def max_batch_size(self) -> int:
        return self._host.max_batch_size

    @property
    def num_workers(self) -> int:
        return self._host.num_workers

    def stats(self) -> HostStats:
        """A snapshot of counters, batch sizes, padding and latency percentiles."""
        return self._host.stats()

    # ------------------------------------------------------------------ lifecycle
    def __call__(self, *model_args: Any, **model_kwargs: Any) -> ModelHost:
        """Set ``model_cls``'s constructor arguments (1.0's ``host(*args)``); returns ``self``.

        The model is built by :meth:`start`, off the event loop. A host given
        ``model_obj``, or already started, refuses: its model is built.
        """
        if self.model_obj is not None:  # given, or built by start()
            raise ConfigurationError(
                f"model_obj={self.model_obj!r} is already built: calling the host sets "
                f"model_cls's constructor arguments, got {model_args!r}, {model_kwargs!r}"
            )
        self._host(*model_args, **model_kwargs)
        return self

    # ------------------------------------------------------------------ requests
    async def predict(
        self, *args: Any, timeout: float | None = None, wait_for_queue: bool = False
    ) -> Any:
        """Run one request, batched with others; await its result.

        As :meth:`batch_inference.ModelHost.predict_async`: never blocks the
        event loop; cancelling the awaiting task removes the request if it has
        not started.
        """
        return await self._host.predict_async(*args, timeout=timeout,
                                              wait_for_queue=wait_for_queue)

    def map(
        self,
        *iterables: Iterable[Any] | AsyncIterable[Any],
        window: int | None = None,
        return_exceptions: bool = False,
        progress: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[Any]:
        """Run a whole dataset through the host: ``async for y in host.map(xs): ...``.

        The results come in input order; see
        :meth:`batch_inference.ModelHost.map_async` for the settings (each
        iterable may be plain or asynchronous).
        """
        return self._host.map_async(*iterables, window=window,
                                    return_exceptions=return_exceptions,
                                    progress=progress, timeout=timeout)


async def _off_loop(call: Callable[[], Any]) -> Any:
    """``call()`` in the running loop's default executor."""
    return await asyncio.get_running_loop().run_in_executor(None, call)
