"""One lifecycle for every host: ``start``, ``stop``, ``running``, ``broken``, ``with``.

:class:`HostLifecycle` is the base of the thread hosts
(:class:`~batch_inference.ModelHost`,
:class:`~batch_inference.RemoteModelHost`,
:class:`~batch_inference.generation.GenerationHost`); each supplies how one
*run* (what one :meth:`~HostLifecycle.start` sets going) starts, stops and
breaks. :class:`AsyncHostLifecycle` is the base of the asyncio fronts over a
thread host (``batch_inference.aio.ModelHost``,
:class:`~batch_inference.remote.AsyncRemoteModelHost`): the same lifecycle,
awaited, with the blocking parts in the event loop's default executor.

The rules, the same for every host:

* :meth:`~HostLifecycle.start` on a host that was started and not stopped
  raises :class:`~batch_inference.errors.HostAlreadyRunningError` (a
  ``RuntimeError``, as batch-inference 1.0 raises); a stopped host starts again.
* ``running``: started, not stopped, and not broken.
* ``broken``: the latest run broke (a worker died, or a remote client lost its
  server); it stays ``True`` after :meth:`~HostLifecycle.stop`, until the next
  start. A broken host is not running and must be stopped before it starts again.
* :meth:`~HostLifecycle.stop` ``(cancel_pending=False, timeout=None) -> bool``:
  refuse new requests at once; then finish what was accepted (or, with
  ``cancel_pending``, fail what has not started with
  :class:`~batch_inference.errors.HostStoppedError`); ``True`` when everything
  the run set going has ended within ``timeout``. Stopping a stopped host
  returns ``True`` at once.
* ``with host:`` / ``async with host:`` start, then ``stop()`` (draining) on exit.
"""

from __future__ import annotations

import abc
import asyncio
import threading
from collections.abc import Callable
from typing import Any, Self

from ._checks import non_negative
from .errors import HostAlreadyRunningError

__all__ = ["AsyncHostLifecycle", "HostLifecycle"]


class HostLifecycle(abc.ABC):
    """Start, stop, state and context managers of a thread host (see the module docstring).

    A subclass calls ``super().__init__()`` and implements :meth:`_start_run`,
    :meth:`_stop_run` and :meth:`_run_broken`; the lifecycle lock serialises
    the first two, so a run is never started and stopped at once.
    """

    def __init__(self) -> None:
        self.__lock = threading.Lock()
        self.__started = False

    # ------------------------------------------------------------------ a subclass's part
    @abc.abstractmethod
    def _start_run(self) -> None:
        """Set a new run going (the host is stopped); raise to leave it stopped."""

    @abc.abstractmethod
    def _stop_run(self, cancel_pending: bool, timeout: float | None) -> bool:
        """End the current run as :meth:`stop` describes; whether it ended within ``timeout``."""

    @abc.abstractmethod
    def _run_broken(self) -> bool:
        """Whether the latest run broke (answered after it stopped too; ``False`` before any)."""

    def _describe(self) -> str:
        """How errors name this host."""
        return type(self).__name__

    # ------------------------------------------------------------------ the public lifecycle
    @property
    def running(self) -> bool:
        """Whether the host accepts requests: started, not stopped, not broken."""
        return self.__started and not self._run_broken()

    @property
    def broken(self) -> bool:
        """Whether the latest run broke; stays ``True`` after :meth:`stop`, until :meth:`start`."""
        return self._run_broken()

    def start(self) -> Self:
        """Start serving; returns the host.

        Raises
        ------
        HostAlreadyRunningError
            The host was started and not stopped (a ``RuntimeError``, as
            batch-inference 1.0 raises); :meth:`stop` it first, broken or not.
        """
        with self.__lock:
            if self.__started:
                state = "is broken" if self._run_broken() else "is already running"
                raise HostAlreadyRunningError(f"{self._describe()} {state}; stop() it first")
            self._start_run()
            self.__started = True
            return self

    def stop(self, cancel_pending: bool = False, timeout: float | None = None) -> bool:
        """Stop accepting requests, then end the run.

        Parameters
        ----------
        cancel_pending:
            ``False`` (default): finish every accepted request first (drain).
            ``True``: each request that has not started gets
            :class:`~batch_inference.errors.HostStoppedError`.
        timeout:
            Most seconds to wait for the run to end; ``None`` waits for it.

        Returns
        -------
        bool
            ``True`` when everything the run set going has ended; ``False``
            when ``timeout`` ran out first, or when called from the run's own
            thread (e.g. from ``predict_batch``), which cannot wait for itself:
            the run still ends by itself once it has answered what it
            accepted, and a later start never shares it. A stopped host
            returns ``True`` at once.
        """
        if timeout is not None:
            timeout = non_negative("timeout", timeout)
        with self.__lock:
            if not self.__started:
                return True
            self.__started = False  # refused from now on: running is False while it drains
            return self._stop_run(bool(cancel_pending), timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        # Building a model can take seconds: the event loop keeps serving meanwhile.
        return await _off_loop(self.start)

    async def __aexit__(self, *exc_info: Any) -> None:
        await _off_loop(self.stop)


class AsyncHostLifecycle:
    """The lifecycle of ``host``, awaited: ``await start()``, ``await stop()``, ``async with``.

    The blocking parts (building the model, joining threads, connecting) run in
    the event loop's default executor, so the loop serves other tasks meanwhile.
    """

    def __init__(self, host: HostLifecycle) -> None:
        self.__host = host

    @property
    def running(self) -> bool:
        """Whether the host accepts requests: started, not stopped, not broken."""
        return self.__host.running

    @property
    def broken(self) -> bool:
        """Whether the latest run broke; stays ``True`` after :meth:`stop`, until :meth:`start`."""
        return self.__host.broken

    async def start(self) -> Self:
        """Start serving, in an executor; returns the host.

        Raises :class:`~batch_inference.errors.HostAlreadyRunningError` (a
        ``RuntimeError``) on a host started and not stopped.
        """
        await _off_loop(self.__host.start)
        return self

    async def stop(self, cancel_pending: bool = False, timeout: float | None = None) -> bool:
        """Stop, in an executor: ``stop(cancel_pending, timeout)`` of the thread host.

        By default every accepted request is answered first; returns ``True``
        when everything has ended within ``timeout``.
        """
        return await _off_loop(lambda: self.__host.stop(cancel_pending, timeout))

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.stop()


async def _off_loop(call: Callable[[], Any]) -> Any:
    """``call()`` in the running loop's default executor."""
    return await asyncio.get_running_loop().run_in_executor(None, call)
