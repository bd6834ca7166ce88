"""Pipelining: the next batch is formed and prepared while the model runs, and only when full."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from batch_inference import HostStoppedError, RequestTimeoutError
from batch_inference.batcher import ConcatBatcher

pytestmark = pytest.mark.timeout(60)


class RecordingBatcher(ConcatBatcher):
    """A ConcatBatcher that records each batch it prepares and signals it.

    ``batch()`` raises ``ValueError`` for a batch holding a row of -1.
    """

    def __init__(self) -> None:
        super().__init__(tensor="np")
        self.prepared: list[int] = []
        self.threads: list[str] = []  # the thread that prepared each batch
        self.changed = threading.Condition()

    def batch(self, requests: Sequence[tuple[Any, ...]]) -> tuple[tuple[Any, ...], Any]:
        if any((r[0] == -1).any() for r in requests):
            raise ValueError("cannot batch -1")
        out = super().batch(requests)
        with self.changed:
            self.prepared.append(len(requests))
            self.threads.append(threading.current_thread().name)
            self.changed.notify_all()
        return out

    def wait_prepared(self, count: int, timeout_s: float = 30) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: len(self.prepared) >= count, timeout_s)


def row(value: float) -> np.ndarray:
    return np.full((1, 2), value, dtype=np.float32)


def busy_host(make_host: Any, gated: Any, batcher: RecordingBatcher, size: int = 4) -> Any:
    """A host whose model is busy (gated) with a first request of 0."""
    host = make_host(model_obj=gated, batcher=batcher, max_batch_size=size)
    first = host.submit(row(0))
    assert gated.entered.wait(30)
    host.first = first
    return host


def test_a_full_batch_is_prepared_while_the_model_runs(gated: Any, make_host: Any,
                                                       wait_until: Any) -> None:
    batcher = RecordingBatcher()
    host = busy_host(make_host, gated, batcher)
    futures = [host.submit(row(v)) for v in (1, 2, 3, 4)]
    assert batcher.wait_prepared(2)  # gate's batch, then these four, model still busy
    assert batcher.prepared == [1, 4]
    assert not gated.release.is_set()
    assert host.stats().queue_depth == 4  # prepared, not started: still waiting
    gated.release.set()
    assert [f.result(30)[0, 0] for f in futures] == [2.0, 4.0, 6.0, 8.0]
    assert host.first.result(30)[0, 0] == 0.0
    assert gated.batch_sizes == [1, 4]


def test_a_partial_batch_is_not_formed_early(gated: Any, make_host: Any) -> None:
    batcher = RecordingBatcher()
    host = busy_host(make_host, gated, batcher)
    two = [host.submit(row(v)) for v in (1, 2)]
    assert host.stats().queue_depth == 2  # submit() returns once its request is queued
    # Had the next batch been formed with those two, the next two would make a batch of
    # their own; instead all four go together.
    two += [host.submit(row(v)) for v in (3, 4)]
    assert batcher.wait_prepared(2)
    gated.release.set()
    for f in two:
        f.result(30)
    assert gated.batch_sizes == [1, 4]


def test_an_idle_model_takes_a_partial_batch_at_once(gated: Any, make_host: Any) -> None:
    batcher = RecordingBatcher()
    host = busy_host(make_host, gated, batcher)
    three = [host.submit(row(v)) for v in (1, 2, 3)]
    gated.release.set()  # the model finishes: the three go, not waiting for a fourth
    assert [f.result(30)[0, 0] for f in three] == [2.0, 4.0, 6.0]
    assert gated.batch_sizes == [1, 3]


def test_batches_ahead_come_from_the_prefetcher_and_idle_ones_from_the_model_thread(
    gated: Any, make_host: Any
) -> None:
    batcher = RecordingBatcher()
    host = busy_host(make_host, gated, batcher)  # the model thread took the first batch
    four = [host.submit(row(v)) for v in (1, 2, 3, 4)]  # full: taken ahead
    assert batcher.wait_prepared(2)
    gated.release.set()
    for f in four:
        f.result(30)
    alone = host.submit(row(5))  # the model is idle: its own thread takes it, no hand-off
    assert alone.result(30)[0, 0] == 10.0
    assert batcher.prepared == [1, 4, 1]
    assert batcher.threads[0].startswith("batch_inference-worker-")
    assert batcher.threads[1].startswith("batch_inference-prefetch-")
    assert batcher.threads[2].startswith("batch_inference-worker-")


class SlowPrepareBatcher(RecordingBatcher):
    """Its second batch's preparation waits until ``may_prepare`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.preparing = threading.Event()
        self.may_prepare = threading.Event()

    def batch(self, requests: Sequence[tuple[Any, ...]]) -> tuple[tuple[Any, ...], Any]:
        if len(self.prepared) == 1:  # the batch taken ahead while the model is busy
            self.preparing.set()
            assert self.may_prepare.wait(30)
        return super().batch(requests)


def test_a_model_that_finishes_while_the_next_batch_is_prepared_waits_for_it(
    gated: Any, make_host: Any, wait_until: Any
) -> None:
    # The prefetcher holds four requests and is still preparing them when the model
    # finishes: the model thread must wait for that batch, not wait for new requests
    # (which would strand the prepared batch until another request came).
    batcher = SlowPrepareBatcher()
    host = busy_host(make_host, gated, batcher)
    four = [host.submit(row(v)) for v in (1, 2, 3, 4)]
    assert batcher.preparing.wait(30)
    gated.release.set()
    assert host.first.result(30)[0, 0] == 0.0
    prefetcher = host._scheduler.workers[0].prefetcher
    wait_until(lambda: not prefetcher._running)  # the model is done with its batch
    batcher.may_prepare.set()
    assert [f.result(10)[0, 0] for f in four] == [2.0, 4.0, 6.0, 8.0]
    assert gated.batch_sizes == [1, 4]


def test_a_prepared_request_can_still_be_cancelled(gated: Any, make_host: Any) -> None:
    batcher = RecordingBatcher()
    host = busy_host(make_host, gated, batcher)
    futures = [host.submit(row(v)) for v in (1, 2, 3, 4)]
    assert batcher.wait_prepared(2)
    assert futures[1].cancel()  # prepared, but its batch has not started
    gated.release.set()
    assert [futures[i].result(30)[0, 0] for i in (0, 2, 3)] == [2.0, 6.0, 8.0]
    assert futures[1].cancelled()
    assert gated.batch_sizes == [1, 3]


def test_a_prepared_request_whose_deadline_passed_is_not_run(gated: Any, make_host: Any,
                                                             wait_past: Any) -> None:
    batcher = RecordingBatcher()
    host = busy_host(make_host, gated, batcher)
    doomed = host.submit(row(1), timeout=0.001)
    futures = [host.submit(row(v)) for v in (2, 3, 4)]
    assert batcher.wait_prepared(2)
    deadline_s = time.monotonic() + 0.001
    wait_past(deadline_s)
    gated.release.set()
    with pytest.raises(RequestTimeoutError):
        doomed.result(30)
    assert [f.result(30)[0, 0] for f in futures] == [4.0, 6.0, 8.0]
    assert gated.batch_sizes == [1, 3]


def test_stop_cancelling_answers_prepared_requests(gated: Any, make_host: Any) -> None:
    batcher = RecordingBatcher()
    host = busy_host(make_host, gated, batcher)
    futures = [host.submit(row(v)) for v in (1, 2, 3, 4)]
    assert batcher.wait_prepared(2)
    stopper = threading.Thread(target=host.stop, kwargs={"cancel_pending": True})
    stopper.start()
    for f in futures:
        with pytest.raises(HostStoppedError):
            f.result(30)
    gated.release.set()
    stopper.join(30)
    assert not stopper.is_alive()
    assert host.first.result(30)[0, 0] == 0.0  # the running batch finished
    assert gated.batch_sizes == [1]


def test_a_prepared_batch_that_cannot_be_batched_fails_alone(gated: Any,
                                                             make_host: Any) -> None:
    batcher = RecordingBatcher()
    host = busy_host(make_host, gated, batcher, size=2)
    bad, good = host.submit(row(-1)), host.submit(row(5))
    gated.release.set()
    with pytest.raises(ValueError, match="cannot batch -1"):
        bad.result(30)
    assert good.result(30)[0, 0] == 10.0


def test_many_threads_get_their_own_answers(make_host: Any, wait_until: Any) -> None:
    class Echo:
        def predict_batch(self, x: np.ndarray) -> np.ndarray:
            return x + 0.5

    host = make_host(model_obj=Echo(), batcher=ConcatBatcher(tensor="np"), max_batch_size=8)
    results: dict[int, float] = {}
    barrier = threading.Barrier(16, timeout=30)

    def client(k: int) -> None:
        barrier.wait()
        for i in range(k * 200, (k + 1) * 200):
            results[i] = float(host.predict(row(i))[0, 0])

    threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {i: i + 0.5 for i in range(16 * 200)}
    wait_until(lambda: host.stats().completed == 16 * 200)


class SlowBatcher(ConcatBatcher):
    """A ConcatBatcher whose ``batch()`` does some extra work, so that a quick model often
    finishes while the next batch is still being prepared."""

    def __init__(self) -> None:
        super().__init__(tensor="np")
        self._noise = np.random.default_rng(3).standard_normal(20_000)

    def batch(self, requests: Sequence[tuple[Any, ...]]) -> tuple[tuple[Any, ...], Any]:
        np.sort(self._noise)
        return super().batch(requests)


class Doubler:
    def predict_batch(self, x: np.ndarray) -> np.ndarray:
        return x * 2


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("max_batch_size", [1, 4, 32])
def test_bursts_separated_by_idle_moments_are_all_answered(make_host: Any,
                                                           max_batch_size: int,
                                                           workers: int) -> None:
    """Every burst ends with the queue empty and the model idle: the hand-over between the
    prefetcher (full batches, taken ahead) and the model thread (the rest) must strand
    nothing at that moment, with one worker or two taking from the same queue."""
    rng = np.random.default_rng(7)
    host = make_host(model_obj=Doubler(), batcher=SlowBatcher(), max_batch_size=max_batch_size,
                     num_workers=workers)
    for burst in range(300):
        count = int(rng.integers(1, 3 * max_batch_size + 2))
        futures = [host.submit(row(burst + k)) for k in range(count)]
        assert [f.result(10)[0, 0] for f in futures] == [2.0 * (burst + k) for k in range(count)]


@pytest.mark.parametrize("workers", [1, 2])
def test_asyncio_bursts_separated_by_idle_moments_are_all_answered(make_host: Any,
                                                                   workers: int) -> None:
    import asyncio

    host = make_host(model_obj=Doubler(), batcher=SlowBatcher(), max_batch_size=8,
                     num_workers=workers)

    async def bursts() -> None:
        rng = np.random.default_rng(11)
        for burst in range(200):
            count = int(rng.integers(1, 30))
            async with asyncio.timeout(10):
                got = await asyncio.gather(*(host.predict_async(row(burst + k))
                                             for k in range(count)))
            assert [g[0, 0] for g in got] == [2.0 * (burst + k) for k in range(count)]

    asyncio.run(bursts())
