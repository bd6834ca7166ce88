"""One scheduler per start: restarts, thread ends, and the core's parts on their own.

The host tests (``test_host.py``) go through the public API; here each part
of the core is also driven without a host: the queue, a worker with a fake
scheduler port, a prefetcher fed by hand, and the scatter.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any

import pytest
import torch

from batch_inference import HostBrokenError, ModelHost
from batch_inference._pipeline import Prefetcher, Prepared
from batch_inference._queue import RequestQueue, oldest
from batch_inference._request import Request
from batch_inference._worker import Scatter, Worker
from batch_inference.batcher import BatchLimits, ConcatBatcher, RequestInfo
from batch_inference.batcher.base import Selection
from batch_inference.stats import StatsRecorder

WAIT_S = 30.0


def row(value: float) -> torch.Tensor:
    return torch.full((1, 2), float(value))


def host_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("batch_inference-")}


class SignalsAheadBatcher(ConcatBatcher):
    """A ConcatBatcher that sets ``ahead`` when it batches ``size`` requests at once."""

    def __init__(self, size: int) -> None:
        super().__init__(tensor="pt")
        self.size = size
        self.ahead = threading.Event()

    def batch(self, requests: Any) -> Any:
        if len(requests) == self.size:
            self.ahead.set()
        return super().batch(requests)


class FirstCallGated:
    """``x * 2``; the first call blocks until ``release``, then does ``then()``."""

    def __init__(self, then: Any = None) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.calls = 0
        self._then = then
        self._lock = threading.Lock()

    def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
        with self._lock:
            self.calls += 1
            first = self.calls == 1
        if first:
            self.entered.set()
            assert self.release.wait(WAIT_S)
            if self._then is not None:
                self._then()
        return x * 2


# ----------------------------------------------------------------------------- restarts
@pytest.mark.timeout(60)
def test_a_restart_after_a_stop_that_timed_out_answers_every_caller_of_the_old_start() -> None:
    # The model is busy on a batch of one; the prefetcher holds a full batch of four ahead;
    # 35 more wait. stop() times out, start() begins a new generation, then the model is
    # released: the old generation must still start its held batch and drain its queue.
    model = FirstCallGated()
    batcher = SignalsAheadBatcher(size=4)
    host = ModelHost(model_obj=model, batcher=batcher, max_batch_size=4).start()
    try:
        busy = host.submit(row(0))
        assert model.entered.wait(WAIT_S)
        old = [host.submit(row(i)) for i in range(1, 40)]
        assert batcher.ahead.wait(WAIT_S)  # four are held, prepared, not started
        assert host.stop(timeout=0.05) is False
        host.start()
        model.release.set()
        assert host.predict(row(100), timeout=WAIT_S)[0, 0] == 200.0
        assert busy.result(WAIT_S)[0, 0] == 0.0
        assert [f.result(WAIT_S)[0, 0].item() for f in old] == [2.0 * i for i in range(1, 40)]
    finally:
        model.release.set()
        assert host.stop(timeout=WAIT_S) is True


@pytest.mark.timeout(60)
def test_a_late_death_in_an_old_start_does_not_break_the_new_one() -> None:
    def die() -> None:
        raise KeyboardInterrupt("the old worker dies late")

    model = FirstCallGated(then=die)
    host = ModelHost(model_obj=model).start()
    try:
        doomed = host.submit(row(1))
        assert model.entered.wait(WAIT_S)
        assert host.stop(timeout=0.05) is False
        host.start()
        model.release.set()
        with pytest.raises(HostBrokenError):
            doomed.result(WAIT_S)
        assert host.predict(row(2), timeout=WAIT_S)[0, 0] == 4.0
        assert host.running and not host.broken
    finally:
        model.release.set()
        assert host.stop(timeout=WAIT_S) is True


@pytest.mark.timeout(60)
def test_stats_count_across_restarts_and_a_lowered_limit_stays_lowered() -> None:
    gate = FirstCallGated()

    class OutOfMemoryOnBig:
        def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[0] > 2:
                raise MemoryError("out of memory")
            return gate.predict_batch(x)

    model = OutOfMemoryOnBig()
    host = ModelHost(model_obj=model, max_batch_size=8)
    with host:
        first = host.submit(row(0))
        assert gate.entered.wait(WAIT_S)
        four = [host.submit(row(i)) for i in range(1, 5)]
        gate.release.set()
        assert [f.result(WAIT_S)[0, 0].item() for f in [first, *four]] == [0, 2, 4, 6, 8]
        assert host.batch_limit == 2
    with host:
        assert host.predict(row(1), timeout=WAIT_S)[0, 0] == 2.0
        assert host.batch_limit == 2  # lowered for the host's life
        assert host.max_batch_size == 8  # the setting as given
    assert host.stats().requests == 6
    assert host.model_obj is model and host.models == (model,)


def test_start_leaves_model_obj_as_given_and_models_holds_what_it_built() -> None:
    class Built:
        def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
            return x

    host = ModelHost(Built, num_workers=2)
    assert host.models == ()
    with host:
        assert host.model_obj is None
        assert len(host.models) == 2 and all(isinstance(m, Built) for m in host.models)


# ----------------------------------------------------------------------------- thread ends
@pytest.mark.timeout(60)
@pytest.mark.parametrize("ending", ["drain", "cancel", "broken"])
def test_after_stop_returns_true_no_thread_the_host_started_is_alive(ending: str) -> None:
    before = host_threads()

    class Model:
        def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
            if ending == "broken" and bool((x == 39.0).any()):  # the last one submitted
                raise KeyboardInterrupt("the model is interrupted")
            return x * 2

    host = ModelHost(model_obj=Model(), num_workers=2, max_batch_size=4).start()
    futures = [host.submit(row(i)) for i in range(40)]
    assert len(host_threads() - before) == 4  # 2 model threads, 2 prefetch threads
    assert host.stop(cancel_pending=ending == "cancel", timeout=WAIT_S) is True
    assert host_threads() - before == set()
    for future in futures:  # every caller was answered
        assert future.done()
    assert host.broken == (ending == "broken")


@pytest.mark.timeout(60)
def test_stop_from_inside_predict_batch_says_false_and_the_threads_end_by_themselves() -> None:
    before = host_threads()
    stopped: list[bool] = []
    called = threading.Event()

    class StopsItself:
        def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
            if not called.is_set():
                called.set()
                stopped.append(host.stop())
            return x * 2

    host = ModelHost(model_obj=StopsItself()).start()
    assert host.predict(row(1), timeout=WAIT_S)[0, 0] == 2.0
    assert stopped == [False]
    for thread in host_threads() - before:
        thread.join(WAIT_S)
    assert host_threads() - before == set()
    assert host.stop() is True


# ----------------------------------------------------------------------------- parts alone
def request(value: float, deadline_s: float | None = None) -> Request:
    return Request((row(value),), RequestInfo(), time.monotonic(), deadline_s)


class FakePort:
    """A scheduler port that records what a worker asks of it."""

    def __init__(self, limits: BatchLimits) -> None:
        self._limits = limits
        self.expired: list[Request] = []
        self.lowered: list[int] = []
        self.failures: list[BaseException] = []

    def limits(self) -> BatchLimits:
        return self._limits

    def expire(self, request: Request) -> None:
        self.expired.append(request)
        request.future.set_exception(TimeoutError("expired"))

    def lower_limit(self, failed_size: int) -> None:
        self.lowered.append(failed_size)

    def fail(self, cause: BaseException, batch: list[Request]) -> None:
        self.failures.append(cause)


def test_the_queue_takes_what_is_chosen_and_counts_what_it_did_not_start() -> None:
    queue = RequestQueue(None)
    items = [request(i) for i in range(4)]
    for item in items:
        queue.put(item)
    nothing = lambda waiting, now_s: Selection()  # noqa: E731
    assert queue.take(nothing, None, wait=False) == []  # nothing chosen: nothing taken
    chosen = queue.take(lambda waiting, now_s: Selection((0, 2)), None, wait=False)
    assert chosen == [items[0], items[2]] and len(queue) == 4  # taken, not started: waiting
    assert not items[0].future.running()
    queue.release(2)
    assert len(queue) == 2
    assert queue.take(oldest(5), lambda r: None) == [items[1], items[3]]  # started
    assert items[1].future.running() and len(queue) == 0
    queue.close()
    assert queue.take(nothing, None, wait=False) is None  # closed and empty
    assert not queue.wait_for(1)


def test_the_queue_wakes_a_watcher_once_enough_requests_wait() -> None:
    queue = RequestQueue(None)
    woke = threading.Event()
    watching = threading.Event()

    def watch() -> None:
        watching.set()
        if queue.wait_for(3):
            woke.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert watching.wait(WAIT_S)
    queue.put(request(0))
    queue.put(request(1))
    assert not woke.is_set()  # two are not enough
    queue.put(request(2))
    assert woke.wait(WAIT_S)
    watcher.join(WAIT_S)


def test_the_prefetcher_takes_ahead_only_while_busy_and_holds_what_it_took() -> None:
    queue = RequestQueue(None)
    prepared: list[list[Request]] = []
    ready = threading.Event()

    def prepare(requests: list[Request]) -> Prepared:
        prepared.append(requests)
        ready.set()
        return Prepared(requests)

    prefetcher = Prefetcher(queue, ConcatBatcher(tensor="pt"), lambda: BatchLimits(2),
                            lambda r: None, prepare, lambda requests, outputs, context: None,
                            lambda error, batch: None, name="batch_inference-test-prefetch")
    items = [request(i) for i in range(4)]
    for item in items[:3]:
        queue.put(item)
    prefetcher.thread.start()
    # The model is idle: its own thread takes (and starts) the batch, not the prefetcher.
    assert prefetcher.next() == items[:2] and items[0].future.running()
    queue.put(items[3])  # now busy, and two wait: a full batch is taken ahead
    assert ready.wait(WAIT_S)
    assert prepared == [items[2:]]
    assert len(queue) == 2 and not items[2].future.running()  # held, not started
    assert items[3].future.cancel() and prefetcher.discard(items[3])  # still cancellable
    assert len(queue) == 1
    prefetcher.ran()
    taken_ahead = prefetcher.next()
    assert isinstance(taken_ahead, Prepared)
    assert prefetcher.start(taken_ahead.requests) == [items[2]] and items[2].future.running()
    assert len(queue) == 0
    queue.close()
    prefetcher.ran()
    assert prefetcher.next() is None
    prefetcher.stop()
    prefetcher.thread.join(WAIT_S)
    assert not prefetcher.thread.is_alive()


def test_a_worker_runs_batches_from_its_queue_without_a_host() -> None:
    queue = RequestQueue(None)
    batcher = ConcatBatcher(tensor="pt")
    stats = StatsRecorder()
    port = FakePort(BatchLimits(8))
    scatter = Scatter(batcher, stats)
    worker = Worker(0, lambda x: x * 3, None, queue=queue, batcher=batcher, scatter=scatter,
                    stats=stats, isolate_failures=True, scheduler=port)
    worker.start()
    expired = request(9, deadline_s=time.monotonic() - 1.0)
    live = [request(i) for i in range(5)]
    for item in [expired, *live]:
        queue.put(item)
    assert [r.future.result(WAIT_S)[0, 0].item() for r in live] == [0.0, 3.0, 6.0, 9.0, 12.0]
    queue.close()  # how a worker ends: its queue closes and drains
    for thread in worker.threads:
        thread.join(WAIT_S)
        assert not thread.is_alive()
    assert port.expired == [expired] and port.failures == []
    assert stats.snapshot(6, 0).completed == 5


def test_a_worker_lowers_the_limit_through_its_port_after_out_of_memory() -> None:
    queue = RequestQueue(None)
    batcher = ConcatBatcher(tensor="pt")
    port = FakePort(BatchLimits(8))
    scatter = Scatter(batcher, StatsRecorder())

    def predict(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1:
            raise MemoryError("out of memory")
        return x

    worker = Worker(0, predict, None, queue=queue, batcher=batcher, scatter=scatter,
                    stats=StatsRecorder(), isolate_failures=False, scheduler=port)
    items = [request(i) for i in range(4)]
    for item in items:
        queue.put(item)
    worker.start()
    assert [r.future.result(WAIT_S)[0, 0].item() for r in items] == [0.0, 1.0, 2.0, 3.0]
    assert port.lowered and port.lowered[0] == 4
    queue.close()
    for thread in worker.threads:
        thread.join(WAIT_S)
        assert not thread.is_alive()


def test_a_prefetcher_prepares_a_full_batch_ahead_while_its_model_runs() -> None:
    queue = RequestQueue(None)
    batcher = ConcatBatcher(tensor="pt")
    limits = BatchLimits(2)
    prepared = threading.Event()

    def prepare(requests: list[Request]) -> Prepared:
        args, context = batcher.batch([r.args for r in requests])
        prepared.set()
        return Prepared(requests, args, context)

    fatal: list[BaseException] = []
    prefetcher = Prefetcher(queue, batcher, lambda: limits, lambda r: None, prepare,
                            lambda requests, outputs, context: None,
                            lambda error, batch: fatal.append(error), name="test-prefetch")
    prefetcher.thread.start()
    first = request(0)
    queue.put(first)
    assert prefetcher.next() == [first]  # the model thread takes its own first batch
    ahead = [request(1), request(2)]
    for item in ahead:
        queue.put(item)
    assert prepared.wait(WAIT_S)
    item = prefetcher.next()
    assert isinstance(item, Prepared) and item.requests == ahead
    assert torch.equal(item.args[0], torch.cat([r.args[0] for r in ahead]))
    prefetcher.ran()
    queue.close()  # how a prefetcher ends: its queue closes (it may be waiting for more)
    prefetcher.stop()
    prefetcher.thread.join(WAIT_S)
    assert not prefetcher.thread.is_alive() and fatal == []


def test_the_scatter_answers_a_batch_and_lets_a_base_exception_through() -> None:
    batcher = ConcatBatcher(tensor="pt")
    stats = StatsRecorder()
    scatter = Scatter(batcher, stats)
    items = [request(1), request(2)]
    for item in items:
        item.future.set_running_or_notify_cancel()
    args, context = batcher.batch([r.args for r in items])
    scatter.now(items, args[0] * 2, context)
    assert [r.future.result(0)[0, 0].item() for r in items] == [2.0, 4.0]
    assert stats.snapshot(2, 0).completed == 2

    class Exits(ConcatBatcher):
        def unbatch(self, outputs: Any, context: Any) -> list[Any]:
            raise SystemExit("unbatch exits")

    doomed = [request(3)]
    with pytest.raises(SystemExit):  # whoever called it breaks the host
        Scatter(Exits(tensor="pt"), stats).now(doomed, torch.ones(1, 2), context)
    assert not doomed[0].future.done()
    assert isinstance(items[0].future, Future)


def test_the_prefetch_thread_answers_a_batch_handed_over_and_reports_a_fatal_error() -> None:
    """With a prepared batch waiting, the model thread hands its finished batch back; the
    prefetch thread answers it (a BaseException there breaks the host, and the batches
    behind it are still answered)."""
    queue = RequestQueue(None)
    batcher = ConcatBatcher(tensor="pt")
    answered: list[tuple[list[Request], threading.Thread]] = []
    fatal: list[tuple[BaseException, list[Request]]] = []
    done = threading.Event()

    def answer(requests: list[Request], outputs: Any, context: Any) -> None:
        if outputs == "exit":
            raise SystemExit("unbatch exits")
        answered.append((requests, threading.current_thread()))
        done.set()

    prepared = threading.Event()

    def prepare(requests: list[Request]) -> Prepared:
        prepared.set()
        return Prepared(requests)

    prefetcher = Prefetcher(queue, batcher, lambda: BatchLimits(1), lambda r: None, prepare,
                            answer, lambda error, batch: fatal.append((error, batch)),
                            name="batch_inference-test-prefetch")
    prefetcher.thread.start()
    first, second, third = request(1), request(2), request(3)
    queue.put(first)
    assert prefetcher.next() == [first]
    assert not prefetcher.answer_later([first], "out", None)  # nothing prepared: answer inline
    queue.put(second)
    assert prepared.wait(WAIT_S)  # the model is busy: the next one is prepared
    assert prefetcher.answer_later([first], "exit", None)  # handed over
    assert prefetcher.answer_later([third], "out", None)  # and the one behind it
    prefetcher.ran()
    assert isinstance(prefetcher.next(), Prepared)  # taking the slot wakes the prefetch thread
    assert done.wait(WAIT_S)
    assert answered == [([third], prefetcher.thread)]
    assert len(fatal) == 1 and isinstance(fatal[0][0], SystemExit) and fatal[0][1] == [first]
    prefetcher.ran()
    queue.close()
    prefetcher.stop()
    prefetcher.thread.join(WAIT_S)
    assert not prefetcher.thread.is_alive()


# ----------------------------------------------------------------------------- devices
def test_devices_really_move_the_batch_and_output_device_copies_it_back() -> None:
    seen: list[str] = []

    class OnMeta:
        def __init__(self, device: str) -> None:
            self.device = device

        def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.device.type)  # the batch arrives on the worker's device
            return torch.zeros(x.shape[0], 3)

    with ModelHost(OnMeta, devices=["meta"], batcher=ConcatBatcher(tensor="pt")) as host:
        assert host.predict(row(1), timeout=WAIT_S).shape == (1, 3)
    assert seen == ["meta"]

    with ModelHost(model_obj=FirstCallGated(), output_device="meta") as host:
        host.models[0].release.set()
        result = host.predict(row(2), timeout=WAIT_S)
    assert result.device.type == "meta" and result.shape == (1, 2)


def test_one_model_obj_cannot_serve_several_devices_and_a_bad_output_device_is_named() -> None:
    from batch_inference import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"devices=\['cpu', 'meta'\]"):
        ModelHost(model_obj=FirstCallGated(), devices=["cpu", "meta"])
    with pytest.raises(ConfigurationError, match="'nowhere'"):
        ModelHost(model_obj=FirstCallGated(), output_device="nowhere")


@pytest.mark.timeout(60)
def test_after_out_of_memory_the_failed_batch_is_freed_before_the_retries() -> None:
    import weakref

    gate = FirstCallGated()
    failed: list[weakref.ref] = []
    alive_at_retry: list[bool] = []

    class OutOfMemoryOnBig:
        def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[0] > 2:
                failed.append(weakref.ref(x))
                raise MemoryError("out of memory")
            if failed and not alive_at_retry:
                alive_at_retry.append(failed[0]() is not None)
            return gate.predict_batch(x)

    with ModelHost(model_obj=OutOfMemoryOnBig(), max_batch_size=8) as host:
        first = host.submit(row(0))
        assert gate.entered.wait(WAIT_S)
        four = [host.submit(row(i)) for i in range(1, 5)]
        gate.release.set()
        assert [f.result(WAIT_S)[0, 0].item() for f in [first, *four]] == [0, 2, 4, 6, 8]
    assert alive_at_retry == [False]  # the batch of four was gone when its halves ran
