"""Load generators: closed-loop clients (threads or asyncio tasks) and offline batches."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from ..errors import ConfigurationError

T = TypeVar("T")


@dataclass
class LoadResult:
    """What one load run measured.

    Attributes
    ----------
    queries:
        Calls completed.
    wall_s:
        Wall time from the first call to the last result.
    latencies_s:
        Per-call latency, in call order.
    outputs:
        Per-query results, indexed like the queries (when kept).
    """

    queries: int
    wall_s: float
    latencies_s: np.ndarray
    outputs: list[Any] = field(default_factory=list, repr=False)

    @property
    def qps(self) -> float:
        """Queries per second."""
        return self.queries / self.wall_s if self.wall_s > 0 else float("inf")

    def latency_percentile_s(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q)) if self.latencies_s.size else 0.0

    @property
    def p50_s(self) -> float:
        return self.latency_percentile_s(50)

    @property
    def p99_s(self) -> float:
        return self.latency_percentile_s(99)


def closed_loop(
    call: Callable[..., Any],
    queries: Sequence[tuple[Any, ...]],
    clients: int,
    keep_outputs: bool = False,
    progress: Callable[[int], None] | None = None,
) -> LoadResult:
    """Send every query once from ``clients`` threads, each one call at a time.

    ``call(*query)`` is what a client does (e.g. ``host.predict``). The first
    exception raised by a call is re-raised here after all clients stop.
    ``progress(n)`` is called after each completed call (from client threads).
    """
    if clients < 1:
        raise ConfigurationError(f"clients must be >= 1, got {clients!r}")
    n = len(queries)
    latencies = np.zeros(n)
    outputs: list[Any] = [None] * n if keep_outputs else []
    counter = itertools.count()
    errors: list[BaseException] = []
    go = threading.Event()

    def client() -> None:
        go.wait()
        while not errors and (i := next(counter)) < n:
            started = time.perf_counter()
            try:
                out = call(*queries[i])
            except BaseException as error:  # noqa: BLE001 - reported to the caller
                errors.append(error)
                return
            latencies[i] = time.perf_counter() - started
            if keep_outputs:
                outputs[i] = out
            if progress is not None:
                progress(1)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(min(clients, n))]
    for t in threads:
        t.start()
    started = time.perf_counter()
    go.set()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    return LoadResult(n, wall, latencies, outputs)


async def async_closed_loop(
    call: Callable[..., Awaitable[Any]],
    queries: Sequence[tuple[Any, ...]],
    concurrency: int,
    keep_outputs: bool = False,
) -> LoadResult:
    """Like :func:`closed_loop` with ``concurrency`` asyncio tasks on the running loop.

    The first exception a call raises cancels the other tasks and is re-raised here.
    """
    if concurrency < 1:
        raise ConfigurationError(f"concurrency must be >= 1, got {concurrency!r}")
    n = len(queries)
    latencies = np.zeros(n)
    outputs: list[Any] = [None] * n if keep_outputs else []
    counter = itertools.count()

    async def client() -> None:
        while (i := next(counter)) < n:
            started = time.perf_counter()
            out = await call(*queries[i])
            latencies[i] = time.perf_counter() - started
            if keep_outputs:
                outputs[i] = out

    started = time.perf_counter()
    try:
        async with asyncio.TaskGroup() as group:  # one failing client cancels the others
            for _ in range(min(concurrency, n)):
                group.create_task(client())
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    wall = time.perf_counter() - started
    return LoadResult(n, wall, latencies, outputs)


def on_own_thread(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``function(*args, **kwargs)`` run on a new thread that ends with it; its result or error.

    Why: on a CPU, PyTorch's Linux wheels use GNU OpenMP, and every thread
    that runs a parallel torch operation keeps its own team of OpenMP threads
    for as long as it lives. Once the teams together hold more threads than
    there are CPUs, libgomp stops spinning at its barriers and every parallel
    region pays for sleeping and waking threads. A model call on the main
    thread (a warm-up, a check, an offline ceiling) would leave a team behind
    that slows every later call on a host's worker thread (see "On a CPU" on
    the model host page). Run such calls here instead.
    """
    box: list[Any] = []

    def target() -> None:
        try:
            box.append((True, function(*args, **kwargs)))
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            box.append((False, error))

    thread = threading.Thread(target=target, name="batch_inference-own-thread")
    thread.start()
    thread.join()
    ok, value = box[0]
    if not ok:
        raise value
    return value


def offline_batches(
    predict_batch: Callable[..., Any],
    batches: Sequence[tuple[Any, ...]],
    synchronize: Callable[[], None] | None = None,
) -> float:
    """Seconds to run ``predict_batch(*batch)`` for every batch, back to back.

    ``synchronize`` (e.g. ``torch.cuda.synchronize``) is called before the
    clock starts and before it stops, so GPU work is timed whole. The batches
    run on a thread of their own (see :func:`on_own_thread`).
    """
    return on_own_thread(_offline_batches, predict_batch, batches, synchronize)


def _offline_batches(
    predict_batch: Callable[..., Any],
    batches: Sequence[tuple[Any, ...]],
    synchronize: Callable[[], None] | None,
) -> float:
    if synchronize is not None:
        synchronize()
    started = time.perf_counter()
    for batch in batches:
        predict_batch(*batch)
    if synchronize is not None:
        synchronize()
    return time.perf_counter() - started
