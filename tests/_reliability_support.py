"""Shared pieces of the reliability tests: a model that echoes ids, and the two fronts.

Every request is a ``(1, 2)`` float tensor ``[[id, mark]]``. :class:`EchoModel`
returns its input unchanged, so each caller can check it got the row of its own
id, and records the ids of every ``predict_batch`` call, so a test can assert
which requests the model saw. Its first call can block on a gate: while it
blocks, requests pile up in the queue, so the next batch is known exactly.

A *front* is how a caller reaches the host: :class:`ThreadFront` runs
``host.predict`` in a thread of its own, :class:`AsyncFront` runs
``host.predict_async`` as a task on an event loop (in a background thread).
Both hand back a :class:`Call`, whose ``outcome`` future holds what the caller
got: its result, or the exception it raised.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any

import torch

from batch_inference import ModelHost

BAD = 1.0  # the mark of a request the model fails on


def row(request_id: int, mark: float = 0.0) -> torch.Tensor:
    """A one-row request carrying its id."""
    return torch.tensor([[float(request_id), mark]])


class ModelFailure(ValueError):
    """What :class:`EchoModel` raises on a batch that holds a marked request."""


class EchoModel:
    """``predict_batch(x) -> x``, recording ids; fails on marked rows; optional gate.

    Parameters
    ----------
    gate_first:
        Block the first call until :attr:`release` is set (:attr:`entered` is
        set when it starts).
    oom_above:
        Raise ``torch.cuda.OutOfMemoryError`` for a batch of more rows than this.
    raise_on_mark:
        The exception *class* raised when a marked row is in the batch
        (default :class:`ModelFailure`); ``KeyboardInterrupt`` and the like
        break the host.

    Set :attr:`hold_id` to hold the batch that contains that id: it sets
    :attr:`held` and waits for :attr:`unhold` (a second gate, for a batch
    other than the first).
    """

    def __init__(
        self,
        gate_first: bool = True,
        oom_above: int | None = None,
        raise_on_mark: type[BaseException] = ModelFailure,
    ) -> None:
        self.gate_first = gate_first
        self.oom_above = oom_above
        self.raise_on_mark = raise_on_mark
        self.entered = threading.Event()
        self.release = threading.Event()
        self.hold_id: int | None = None
        self.held = threading.Event()
        self.unhold = threading.Event()
        self.calls: list[list[int]] = []
        self.raised: list[BaseException] = []
        self._lock = threading.Lock()

    def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
        ids = [int(i) for i in x[:, 0].tolist()]
        with self._lock:
            self.calls.append(ids)
            first = len(self.calls) == 1
        if first and self.gate_first:
            self.entered.set()
            if not self.release.wait(60):
                raise RuntimeError("the test never released the gate")
        if self.hold_id is not None and self.hold_id in ids:
            self.held.set()
            if not self.unhold.wait(60):
                raise RuntimeError("the test never released the second gate")
        if self.oom_above is not None and len(ids) > self.oom_above:
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory: a batch of {len(ids)} rows (the test allows "
                f"{self.oom_above})"
            )
        marked = [i for i, m in zip(ids, x[:, 1].tolist()) if m == BAD]
        if marked:
            error = self.raise_on_mark(f"the model refuses ids {marked}")
            with self._lock:
                self.raised.append(error)
            raise error
        return x.clone()

    @property
    def seen(self) -> set[int]:
        """Every id any ``predict_batch`` call received."""
        return {i for call in self.calls for i in call}


class Call:
    """One caller: ``outcome`` is a future of its result (or the exception it raised)."""

    def __init__(self) -> None:
        self.outcome: Future[Any] = Future()
        self.cancel_hook: Any = None

    def result(self, timeout: float = 10.0) -> Any:
        return self.outcome.result(timeout)

    def error(self, timeout: float = 10.0) -> BaseException | None:
        return self.outcome.exception(timeout)

    def cancel(self) -> bool | None:
        """Cancel the caller (the asyncio task, or the submitted future)."""
        return self.cancel_hook()


class ThreadFront:
    """Callers are threads blocked in ``host.predict`` (or holding ``host.submit`` futures)."""

    name = "thread"

    def call(self, host: ModelHost, *args: Any, **kwargs: Any) -> Call:
        call = Call()

        def run() -> None:
            try:
                call.outcome.set_result(host.predict(*args, **kwargs))
            except BaseException as error:  # noqa: BLE001 - the test inspects it
                call.outcome.set_exception(error)

        threading.Thread(target=run, daemon=True).start()
        return call

    def cancellable_call(self, host: ModelHost, *args: Any, **kwargs: Any) -> Call:
        """A call whose caller can give up: a :meth:`ModelHost.submit` future."""
        call = Call()
        future = host.submit(*args, **kwargs)
        call.cancel_hook = future.cancel

        future.add_done_callback(lambda done: _copy_outcome(done, call))
        return call

    def close(self) -> None:
        pass


class AsyncFront:
    """Callers are asyncio tasks awaiting ``host.predict_async`` on one event loop."""

    name = "asyncio"

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, host: ModelHost, *args: Any, **kwargs: Any) -> Call:
        call = Call()

        async def spawn() -> asyncio.Task:
            return asyncio.ensure_future(host.predict_async(*args, **kwargs))

        task = asyncio.run_coroutine_threadsafe(spawn(), self.loop).result(10)

        self.loop.call_soon_threadsafe(task.add_done_callback,
                                       lambda done: _copy_outcome(done, call))

        def cancel() -> None:
            self.loop.call_soon_threadsafe(task.cancel)

        call.cancel_hook = cancel
        return call

    cancellable_call = call

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def _copy_outcome(done: Future | asyncio.Task, call: Call) -> None:
    """Hand a finished future's or task's outcome (or its cancellation) to ``call``."""
    if done.cancelled():
        call.outcome.set_exception(asyncio.CancelledError())
    elif done.exception() is not None:
        call.outcome.set_exception(done.exception())
    else:
        call.outcome.set_result(done.result())
