"""What the host itself costs: a model that does nothing, driven as hard as possible.

Three figures: requests per second from many threads, requests per second from
many asyncio tasks, and the latency a lone caller adds over calling
``predict_batch`` directly (medians, :func:`lone_caller_latency`). And, for the
thread figure, a floor measured side by side: the same closed loop with no host
at all, only the hand-off of each request to another thread and back. The
model is :class:`~benchmarks._accelerator_harness.NoOpModel`; this is the one
lone-caller measurement, used by the reports and the overhead page.
Nothing here imports pandas, matplotlib or transformers.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from batch_inference.batcher.concat_batcher import ConcatBatcher
from batch_inference.benchmark.load import async_closed_loop, closed_loop
from batch_inference.errors import ConfigurationError
from batch_inference.host import ModelHost

from ._accelerator_harness import NoOpModel

__all__ = [
    "LoneCallerLatency",
    "OverheadResult",
    "async_requests_per_s",
    "handoff_floor_requests_per_s",
    "lone_caller_latency",
    "measure_overhead",
    "thread_requests_per_s",
]


def _queries(count: int) -> list[tuple[np.ndarray]]:
    row = np.zeros((1, 4), dtype=np.float32)
    return [(row,)] * count


def _host(max_batch_size: int) -> ModelHost:
    return ModelHost(model_obj=NoOpModel(), batcher=ConcatBatcher(tensor="np"),
                     max_batch_size=max_batch_size)


def thread_requests_per_s(threads: int = 64, requests: int = 50_000,
                          max_batch_size: int = 64) -> float:
    """Requests per second through ``host.predict`` from ``threads`` threads."""
    with _host(max_batch_size) as host:
        return _threads_qps(host.predict, threads, requests)


def _threads_qps(call: Any, threads: int, requests: int) -> float:
    """Requests per second of ``call`` from ``threads`` closed-loop threads, after a warm-up."""
    queries = _queries(requests)
    closed_loop(call, queries[: min(requests, 2_000)], threads)  # warm up
    return closed_loop(call, queries, threads).qps


def handoff_floor_requests_per_s(threads: int = 64, requests: int = 50_000) -> float:
    """Requests per second with no host at all: the least a blocking thread caller pays here.

    Each call makes a lock, holds it, queues it and blocks on it; one server
    thread takes every queued lock at once and releases them. No batcher, no
    model, no futures, no stats: only the hand-off to another thread and the
    wake-up, driven by the same closed loop as :func:`thread_requests_per_s`.
    """
    waiting: list[threading.Lock] = []
    ready = threading.Condition()
    stopping = False

    def serve() -> None:
        nonlocal waiting
        while True:
            with ready:
                while not waiting and not stopping:
                    ready.wait()
                if not waiting:
                    return
                taken, waiting = waiting, []
            for lock in taken:
                lock.release()

    def call(_row: Any) -> None:
        lock = threading.Lock()
        lock.acquire()
        with ready:
            waiting.append(lock)
            ready.notify()
        lock.acquire()

    server = threading.Thread(target=serve, name="handoff-floor-server", daemon=True)
    server.start()
    try:
        return _threads_qps(call, threads, requests)
    finally:
        with ready:
            stopping = True
            ready.notify()
        server.join()


def async_requests_per_s(tasks: int = 1_000, requests: int = 100_000,
                         max_batch_size: int = 256) -> float:
    """Requests per second through ``host.predict_async`` from ``tasks`` asyncio tasks."""
    queries = _queries(requests)

    async def run() -> float:
        with _host(max_batch_size) as host:
            await async_closed_loop(host.predict_async, queries[: min(requests, 5_000)], tasks)
            return (await async_closed_loop(host.predict_async, queries, tasks)).qps

    return asyncio.run(run())


@dataclass(frozen=True)
class LoneCallerLatency:
    """One caller, one request at a time: medians of a direct call and of a host call.

    Attributes
    ----------
    direct_s:
        Median seconds of ``predict_batch`` called directly.
    hosted_s:
        Median seconds of ``host.predict`` on the same request.
    """

    direct_s: float
    hosted_s: float

    @property
    def added_s(self) -> float:
        """What the host adds: ``hosted_s - direct_s``."""
        return self.hosted_s - self.direct_s


def lone_caller_latency(calls: int = 2_000) -> LoneCallerLatency:
    """A lone caller's latency through ``host.predict`` and through ``predict_batch`` itself.

    The model does nothing
    (:class:`~benchmarks._accelerator_harness.NoOpModel`); after a warm-up
    through the host, each of ``calls`` rounds calls the model directly, then
    the host, so a drift of the machine touches both sides alike.

    Raises
    ------
    ConfigurationError
        When ``calls`` is below 1.
    """
    if calls < 1:
        raise ConfigurationError(f"calls must be >= 1, got {calls!r}")
    model = NoOpModel()
    query = _queries(1)[0]
    direct, hosted = [], []
    with _host(32) as host:
        for _ in range(min(calls, 200)):
            host.predict(*query)  # warm up
        for _ in range(calls):  # interleaved, so drift hits both alike
            started = time.perf_counter()
            model.predict_batch(*query)
            middle = time.perf_counter()
            host.predict(*query)
            direct.append(middle - started)
            hosted.append(time.perf_counter() - middle)
    return LoneCallerLatency(statistics.median(direct), statistics.median(hosted))


@dataclass(frozen=True)
class OverheadResult:
    """The overhead figures (see the module docstring), and the thread hand-off floor."""

    thread_requests_per_s: float
    threads: int
    async_requests_per_s: float
    tasks: int
    lone_caller_direct_ms: float
    lone_caller_hosted_ms: float
    thread_floor_requests_per_s: float

    @property
    def lone_caller_added_ms(self) -> float:
        """What the host adds to a lone caller's median latency (milliseconds)."""
        return self.lone_caller_hosted_ms - self.lone_caller_direct_ms

    def record(self) -> dict[str, Any]:
        return asdict(self)


def measure_overhead(quick: bool = True) -> OverheadResult:
    """Every figure; ``quick`` keeps each measurement to about a second."""
    threads, tasks = 64, 1_000
    scale = 1 if quick else 4
    lone = lone_caller_latency(2_000 * scale)
    return OverheadResult(
        thread_requests_per_s=thread_requests_per_s(threads, 30_000 * scale),
        threads=threads,
        async_requests_per_s=async_requests_per_s(tasks, 100_000 * scale),
        tasks=tasks,
        lone_caller_direct_ms=lone.direct_s * 1e3,
        lone_caller_hosted_ms=lone.hosted_s * 1e3,
        thread_floor_requests_per_s=handoff_floor_requests_per_s(threads, 30_000 * scale),
    )


def main() -> None:
    """Print :func:`measure_overhead` as JSON (``python -m benchmarks.overhead``).

    Run it in a fresh interpreter: in a process that has loaded a large model,
    the garbage collector's full passes over its objects slow the host down.
    """
    import json
    import sys

    quick = "--full" not in sys.argv[1:]
    print(json.dumps(measure_overhead(quick=quick).record()))


if __name__ == "__main__":
    main()
