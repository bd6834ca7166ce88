"""ModelHost: results, batching, lifecycle, errors and batch-inference 1.0 compatibility.

Requests pile up deterministically behind the ``gated`` model (see conftest):
its first ``predict_batch`` call blocks until the test opens the gate, so the
requests submitted meanwhile form the next batch. No test sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any

import numpy as np
import pytest
import torch

from batch_inference import (
    BatchInferenceError,
    ConfigurationError,
    HostAlreadyRunningError,
    HostNotRunningError,
    HostStoppedError,
    InvalidRequestError,
    ModelHost,
    OutputMismatchError,
)
from batch_inference.batcher import BucketSeqBatcher, ConcatBatcher, SeqBatcher


class Doubler:
    """``predict_batch(x) -> 2 * x``, counting calls."""

    def __init__(self, scale: float = 2.0) -> None:
        self.scale = scale
        self.sizes: list[int] = []

    def predict_batch(self, x: Any) -> Any:
        self.sizes.append(int(x.shape[0]))
        return x * self.scale


def rows_of(i: int, rows: int = 1, width: int = 3) -> torch.Tensor:
    return torch.full((rows, width), float(i))


# ----------------------------------------------------------------------------- results
@pytest.mark.timeout(60)
def test_many_threads_each_get_the_model_output_of_their_own_input(make_host) -> None:
    host = make_host(model_obj=Doubler(), max_batch_size=8)
    threads, per_thread = 16, 25
    barrier = threading.Barrier(threads, timeout=30)
    results: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
    errors: list[BaseException] = []

    def client(t: int) -> None:
        rng = np.random.default_rng(t)
        barrier.wait()
        try:
            for k in range(per_thread):
                x = torch.from_numpy(rng.normal(size=(int(rng.integers(1, 4)), 5)))
                results[t, k] = (x, host.predict(x))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    workers = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert not any(w.is_alive() for w in workers), "a client is still waiting"

    assert errors == []
    assert len(results) == threads * per_thread
    for x, y in results.values():
        assert torch.equal(y, x * 2)
    assert host.stats().completed == threads * per_thread


def test_default_batcher_is_concat() -> None:
    host = ModelHost(model_obj=Doubler())
    assert type(host.batcher) is ConcatBatcher


@pytest.mark.timeout(30)
def test_requests_gather_while_the_model_is_busy(make_host, gated) -> None:
    host = make_host(model_obj=gated, max_batch_size=32)
    first = host.submit(rows_of(0))
    assert gated.entered.wait(10)
    queued = [host.submit(rows_of(i, rows=i)) for i in range(1, 6)]
    gated.release.set()

    assert torch.equal(first.result(10), rows_of(0) * 2)
    for i, future in enumerate(queued, start=1):
        assert torch.equal(future.result(10), rows_of(i, rows=i) * 2)
    assert gated.batch_sizes == [1, 1 + 2 + 3 + 4 + 5]


@pytest.mark.timeout(30)
def test_batches_hold_at_most_max_batch_size_requests(make_host, gated) -> None:
    host = make_host(model_obj=gated, max_batch_size=4)
    futures = [host.submit(rows_of(0))]
    assert gated.entered.wait(10)
    futures += [host.submit(rows_of(i)) for i in range(1, 11)]
    gated.release.set()

    for i, future in enumerate(futures):
        assert torch.equal(future.result(10), rows_of(i) * 2)
    assert gated.batch_sizes == [1, 4, 4, 2]


@pytest.mark.timeout(30)
def test_a_lone_request_with_max_delay_is_served(make_host) -> None:
    host = make_host(model_obj=Doubler(), max_delay_s=0.01)
    assert torch.equal(host.predict(rows_of(3)), rows_of(3) * 2)


@pytest.mark.timeout(60)
def test_asyncio_tasks_get_their_own_results(make_host) -> None:
    model = Doubler()
    host = make_host(model_obj=model, max_batch_size=16)

    async def main() -> list[tuple[torch.Tensor, torch.Tensor]]:
        inputs = [rows_of(i, rows=1 + i % 3) for i in range(300)]
        outputs = await asyncio.gather(*(host.predict_async(x) for x in inputs))
        return list(zip(inputs, outputs))

    for x, y in asyncio.run(main()):
        assert torch.equal(y, x * 2)
    assert max(model.sizes) > 1  # concurrent tasks were batched together


@pytest.mark.timeout(60)
def test_several_event_loops_and_threads_share_one_host(make_host) -> None:
    host = make_host(model_obj=Doubler(), max_batch_size=16)
    barrier = threading.Barrier(4, timeout=30)
    failures: list[BaseException] = []

    def loop_client(base: int) -> None:
        async def main() -> None:
            xs = [rows_of(base + i) for i in range(50)]
            ys = await asyncio.gather(*(host.predict_async(x) for x in xs))
            for x, y in zip(xs, ys):
                assert torch.equal(y, x * 2)

        barrier.wait()
        try:
            asyncio.run(main())
        except BaseException as error:  # noqa: BLE001 - reported below
            failures.append(error)

    def thread_client(base: int) -> None:
        barrier.wait()
        try:
            for i in range(50):
                assert torch.equal(host.predict(rows_of(base + i)), rows_of(base + i) * 2)
        except BaseException as error:  # noqa: BLE001 - reported below
            failures.append(error)

    workers = [threading.Thread(target=loop_client, args=(b,)) for b in (0, 100)]
    workers += [threading.Thread(target=thread_client, args=(b,)) for b in (200, 300)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert not any(w.is_alive() for w in workers), "a client is still waiting"
    assert failures == []


# ----------------------------------------------------------------------------- lifecycle
def test_predict_before_start_raises_host_not_running() -> None:
    host = ModelHost(model_obj=Doubler())
    assert not host.running
    with pytest.raises(HostNotRunningError, match=r"call start\(\)"):
        host.predict(rows_of(1))
    with pytest.raises(HostNotRunningError):
        asyncio.run(host.predict_async(rows_of(1)))
    assert issubclass(HostNotRunningError, BatchInferenceError)


@pytest.mark.timeout(30)
def test_start_and_stop_twice_then_restart() -> None:
    model = Doubler()
    host = ModelHost(model_obj=model)
    assert host.start() is host
    with pytest.raises(HostAlreadyRunningError, match="already running") as raised:
        host.start()  # batch-inference 1.0 raises RuntimeError on a second start too
    assert isinstance(raised.value, RuntimeError)
    assert host.running
    assert torch.equal(host.predict(rows_of(1)), rows_of(1) * 2)
    assert host.stop() is True
    assert host.stop() is True
    assert not host.running
    with pytest.raises(HostNotRunningError):
        host.predict(rows_of(1))

    host.start()  # restart after stop
    try:
        assert torch.equal(host.predict(rows_of(2)), rows_of(2) * 2)
    finally:
        assert host.stop() is True
    assert model.sizes == [1, 1]


@pytest.mark.timeout(30)
def test_with_host_starts_and_stops() -> None:
    host = ModelHost(model_obj=Doubler())
    with host as entered:
        assert entered is host and host.running
        assert torch.equal(host.predict(rows_of(4)), rows_of(4) * 2)
    assert not host.running
    with pytest.raises(HostNotRunningError):
        host.predict(rows_of(4))


@pytest.mark.timeout(30)
def test_async_with_host_starts_and_stops() -> None:
    host = ModelHost(model_obj=Doubler())

    async def main() -> torch.Tensor:
        async with host as entered:
            assert entered is host and host.running
            return await host.predict_async(rows_of(5))

    assert torch.equal(asyncio.run(main()), rows_of(5) * 2)
    assert not host.running
    with pytest.raises(HostNotRunningError):
        asyncio.run(host.predict_async(rows_of(5)))


@pytest.mark.timeout(30)
def test_stop_drains_callers_that_wait(gated, wait_until) -> None:
    host = ModelHost(model_obj=gated).start()
    outcomes: dict[int, Any] = {}

    def caller(i: int) -> None:
        try:
            outcomes[i] = host.predict(rows_of(i))
        except BaseException as error:  # noqa: BLE001 - checked below
            outcomes[i] = error

    callers = [threading.Thread(target=caller, args=(0,))]
    callers[0].start()
    assert gated.entered.wait(10)
    callers += [threading.Thread(target=caller, args=(i,)) for i in range(1, 5)]
    for c in callers[1:]:
        c.start()
    wait_until(lambda: host.stats().queue_depth == 4)
    stopped: list[bool] = []
    stopper = threading.Thread(target=lambda: stopped.append(host.stop()))
    stopper.start()
    wait_until(lambda: not host.running)
    with pytest.raises(HostNotRunningError):
        host.predict(rows_of(9))  # refused at once while the host drains

    gated.release.set()
    for c in [*callers, stopper]:
        c.join(10)
    assert stopped == [True]
    assert sorted(outcomes) == [0, 1, 2, 3, 4]
    for i, value in outcomes.items():
        assert torch.equal(value, rows_of(i) * 2)


@pytest.mark.timeout(30)
def test_stop_cancel_pending_fails_waiting_callers_with_a_typed_error(gated) -> None:
    host = ModelHost(model_obj=gated).start()
    running = host.submit(rows_of(0))
    assert gated.entered.wait(10)
    waiting = [host.submit(rows_of(i)) for i in range(1, 5)]
    stopped: list[bool] = []
    stopper = threading.Thread(target=lambda: stopped.append(host.stop(cancel_pending=True)))
    stopper.start()

    for future in waiting:  # failed before the running batch ends
        assert isinstance(future.exception(10), HostStoppedError)
    gated.release.set()
    stopper.join(10)
    assert torch.equal(running.result(10), rows_of(0) * 2)
    assert stopped == [True]


@pytest.mark.timeout(30)
def test_stop_cancel_pending_reaches_asyncio_callers(gated) -> None:
    host = ModelHost(model_obj=gated).start()

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        running = asyncio.create_task(host.predict_async(rows_of(0)))
        assert await loop.run_in_executor(None, gated.entered.wait, 10)
        waiting = [asyncio.create_task(host.predict_async(rows_of(i))) for i in range(1, 4)]
        await asyncio.sleep(0)  # let each task queue its request
        assert host.stats().queue_depth == 3
        stop = loop.run_in_executor(None, lambda: host.stop(cancel_pending=True))
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        gated.release.set()
        assert await stop is True
        return [await running, *outcomes]

    first, *rest = asyncio.run(main())
    assert torch.equal(first, rows_of(0) * 2)
    assert len(rest) == 3 and all(isinstance(e, HostStoppedError) for e in rest)


@pytest.mark.timeout(30)
def test_stop_called_inside_predict_batch_serves_every_accepted_request() -> None:
    entered, release = threading.Event(), threading.Event()
    stopped: list[bool] = []

    class StopsItself:
        calls = 0

        def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
            StopsItself.calls += 1
            if StopsItself.calls == 1:
                entered.set()
                assert release.wait(10)
                stopped.append(host.stop())
            return x * 2

    host = ModelHost(model_obj=StopsItself()).start()
    first = host.submit(rows_of(1))
    assert entered.wait(10)
    second = host.submit(rows_of(2))
    release.set()

    assert torch.equal(first.result(10), rows_of(1) * 2)
    assert torch.equal(second.result(10), rows_of(2) * 2)
    assert not host.running
    with pytest.raises(HostNotRunningError):
        host.predict(rows_of(3))


# ----------------------------------------------------------------------------- errors
class OneArg:
    def predict_batch(self, x: Any) -> Any:
        return x


class OptionalArg:
    def predict_batch(self, x: Any, y: Any = None) -> Any:
        return x


class VarArgs:
    def predict_batch(self, x: Any, *rest: Any) -> Any:
        return x


@pytest.mark.timeout(30)
def test_wrong_argument_count_is_refused_before_queueing(make_host) -> None:
    host = make_host(model_obj=OneArg())
    with pytest.raises(InvalidRequestError, match=r"takes 1 arguments, got 2"):
        host.predict(rows_of(1), rows_of(1))
    with pytest.raises(InvalidRequestError, match=r"takes 1 arguments, got 0"):
        host.predict()
    with pytest.raises(InvalidRequestError, match=r"takes 1 arguments, got 2"):
        asyncio.run(host.predict_async(rows_of(1), rows_of(1)))
    assert host.stats().requests == 0


@pytest.mark.timeout(30)
def test_argument_range_with_defaults_and_model_cls(make_host) -> None:
    host = make_host(model_obj=OptionalArg())
    with pytest.raises(InvalidRequestError, match=r"takes 1 to 2 arguments, got 3"):
        host.predict(rows_of(1), rows_of(1), rows_of(1))
    assert torch.equal(host.predict(rows_of(1), rows_of(1)), rows_of(1))
    var_host = make_host(model_obj=VarArgs())
    with pytest.raises(InvalidRequestError, match=r"takes at least 1 arguments, got 0"):
        var_host.predict()
    cls_host = make_host(OneArg)  # unbound method: ``self`` is not counted
    with pytest.raises(InvalidRequestError, match=r"takes 1 arguments, got 2"):
        cls_host.predict(rows_of(1), rows_of(1))


@pytest.mark.timeout(30)
def test_batcher_validation_runs_in_the_callers_thread(make_host) -> None:
    host = make_host(model_obj=Doubler(), batcher=ConcatBatcher("pt"))
    with pytest.raises(InvalidRequestError, match=r"argument 0 is a list"):
        host.predict([1.0, 2.0])
    assert host.stats().requests == 0


class Raises:
    def __init__(self) -> None:
        self.error = ValueError("model failed on purpose")
        self.sizes: list[int] = []

    def predict_batch(self, x: Any) -> Any:
        self.sizes.append(int(x.shape[0]))
        raise self.error


def three_behind_a_gated_first(host: ModelHost, gated: Any) -> list:
    """Submit rows 1..3 while the gated model runs row 0 alone; the three form one batch."""
    first = host.submit(rows_of(0))
    assert gated.entered.wait(10)
    batch = [host.submit(rows_of(i)) for i in range(1, 4)]
    gated.release.set()
    assert torch.equal(first.result(10), rows_of(0) * 2)
    return batch


@pytest.mark.timeout(30)
def test_model_exception_reaches_every_caller_of_the_batch_as_the_same_object(gated) -> None:
    failing = Raises()

    class GateThenRaise:
        def predict_batch(self, x: Any) -> Any:
            if not gated.entered.is_set():
                return gated.predict_batch(x)
            return failing.predict_batch(x)

    with ModelHost(model_obj=GateThenRaise(), isolate_failures=False) as host:
        batch = three_behind_a_gated_first(host, gated)
        for future in batch:
            assert future.exception(10) is failing.error
        assert failing.sizes == [3]
        # The host keeps serving after a failed batch.
        with pytest.raises(ValueError) as caught:
            host.predict(rows_of(9))
        assert caught.value is failing.error


@pytest.mark.timeout(30)
def test_model_exception_reaches_threads_and_tasks_unwrapped(make_host) -> None:
    model = Raises()
    host = make_host(model_obj=model)
    with pytest.raises(ValueError, match="model failed on purpose") as caught:
        host.predict(rows_of(1))
    assert caught.value is model.error

    async def call() -> None:
        await host.predict_async(rows_of(1))

    with pytest.raises(ValueError) as caught_async:
        asyncio.run(call())
    assert caught_async.value is model.error


@pytest.mark.timeout(30)
def test_wrong_row_count_is_an_output_mismatch_naming_both_numbers(gated) -> None:
    class GateThenWrong:
        def predict_batch(self, x: Any) -> Any:
            if not gated.entered.is_set():
                return gated.predict_batch(x)
            return x[:1]

    with ModelHost(model_obj=GateThenWrong()) as host:
        batch = three_behind_a_gated_first(host, gated)
        for future in batch:
            error = future.exception(10)
            assert isinstance(error, OutputMismatchError)
            assert "with 1 rows" in str(error) and "expected 3" in str(error)
        assert torch.equal(host.predict(rows_of(5)), rows_of(5)[:1])  # still serving


class DropsOneResult(ConcatBatcher):
    def unbatch(self, outputs: Any, context: Any) -> list[Any]:
        return super().unbatch(outputs, context)[:-1]


@pytest.mark.timeout(30)
def test_a_batcher_returning_too_few_results_is_an_output_mismatch(make_host) -> None:
    host = make_host(model_obj=Doubler(), batcher=DropsOneResult())
    with pytest.raises(OutputMismatchError, match=r"returned 0 results for a batch of 1"):
        host.predict(rows_of(1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, r"exactly one of model_cls and model_obj"),
        ({"model_cls": Doubler, "model_obj": Doubler()}, r"exactly one of"),
        ({"model_obj": object()}, r"has no predict_batch"),
        ({"model_obj": Doubler(), "max_batch_size": 0}, r"max_batch_size .* got 0"),
        ({"model_obj": Doubler(), "max_batch_size": True}, r"max_batch_size .* got True"),
        ({"model_obj": Doubler(), "max_batch_size": "8"}, r"max_batch_size .* got '8'"),
        ({"model_obj": Doubler(), "max_delay_s": -1}, r"max_delay_s .* got -1"),
        ({"model_obj": Doubler(), "max_batch_tokens": 0}, r"max_batch_tokens .* got 0"),
        ({"model_obj": Doubler(), "num_workers": 0}, r"num_workers .* got 0"),
        ({"model_obj": Doubler(), "wait_ms": -5}, r"wait_ms .* got -5"),
        ({"model_obj": Doubler(), "wait_n": 0}, r"wait_n .* got 0"),
        ({"model_obj": Doubler(), "wait_ms": 5, "max_delay_s": 0.1}, r"not both"),
        ({"model_obj": Doubler(), "batcher": "seq"}, r"Batcher instance, got 'seq'"),
        ({"model_obj": Doubler(), "devices": []}, r"at least one device, got \[\]"),
        ({"model_obj": Doubler(), "max_queue_size": 0}, r"max_queue_size .* got 0"),
        ({"model_obj": Doubler(), "default_timeout_s": 0}, r"default_timeout_s .* got 0"),
    ],
)
def test_bad_host_settings_are_configuration_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ModelHost(**kwargs)


# ----------------------------------------------------------------------------- buckets
class RecordingSeqModel:
    """``predict_batch(ids, mask) -> ids[..., None] * 10``; records each call's rows.

    Request ``i`` is ``torch.full((1, L), i + 1)``: a row's length is its count of
    non-zero tokens. The first call blocks until ``release`` is set.
    """

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.calls: list[tuple[list[int], int]] = []  # (lengths of the rows, padded width)

    def predict_batch(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        assert torch.equal(mask.bool(), ids != 0)
        self.calls.append(((ids != 0).sum(dim=1).tolist(), int(ids.shape[1])))
        if len(self.calls) == 1:
            self.entered.set()
            assert self.release.wait(10)
        return ids[:, :, None].to(torch.float32) * 10


@pytest.mark.timeout(30)
def test_bucket_batches_hold_one_bucket_padded_to_their_longest(make_host) -> None:
    model = RecordingSeqModel()
    batcher = BucketSeqBatcher(padding_tokens=[0, 0], buckets=[16, 32, 64], tensor="pt")
    host = make_host(model_obj=model, batcher=batcher, max_batch_size=32)
    lengths = [5, 3, 20, 16, 17, 70, 64, 65, 1, 33, 40, 200]
    inputs = [torch.full((1, n), i + 1, dtype=torch.int64) for i, n in enumerate(lengths)]
    futures: list[Future] = [host.submit(inputs[0], torch.ones_like(inputs[0]))]
    assert model.entered.wait(10)
    futures += [host.submit(x, torch.ones_like(x)) for x in inputs[1:]]
    model.release.set()

    for x, future in zip(inputs, futures):
        assert torch.equal(future.result(10), x[:, :, None].to(torch.float32) * 10)
    calls = model.calls
    assert sorted(n for rows, _ in calls for n in rows) == sorted(lengths)
    for rows, width in calls:
        assert len({batcher.bucket_of(n) for n in rows}) == 1, rows
        assert width == max(rows)
    # After the first call, each bucket is one call, oldest bucket first.
    assert [sorted(rows) for rows, _ in calls[1:]] == [
        [1, 3, 16], [17, 20], [65, 70, 200], [33, 40, 64],
    ]


@pytest.mark.timeout(30)
def test_seq_batcher_in_a_host_trims_each_callers_output(make_host) -> None:
    model = RecordingSeqModel()
    host = make_host(model_obj=model, batcher=SeqBatcher([0, 0], tensor="pt"))
    inputs = [torch.full((1, n), i + 1, dtype=torch.int64) for i, n in enumerate([4, 9, 2, 30])]
    futures = [host.submit(inputs[0], torch.ones_like(inputs[0]))]
    assert model.entered.wait(10)
    futures += [host.submit(x, torch.ones_like(x)) for x in inputs[1:]]
    model.release.set()
    for x, future in zip(inputs, futures):
        assert torch.equal(future.result(10), x[:, :, None].to(torch.float32) * 10)
    assert model.calls[1] == ([9, 2, 30], 30)


# ----------------------------------------------------------------------------- compatibility
class Built:
    """A model class recording how it was built."""

    instances: list[Built] = []

    def __init__(self, scale: float = 2.0, *, offset: float = 0.0) -> None:
        self.scale, self.offset = scale, offset
        Built.instances.append(self)

    def predict_batch(self, x: Any) -> Any:
        return x * self.scale + self.offset


@pytest.mark.timeout(30)
def test_model_host_1_0_call_style() -> None:
    from batch_inference.model_host import ModelHost as CompatModelHost

    assert CompatModelHost is ModelHost
    Built.instances = []
    host = CompatModelHost(Built, batcher=ConcatBatcher(tensor="pt"), max_batch_size=8)(
        3.0, offset=1.0
    )
    assert isinstance(host, ModelHost)
    assert Built.instances == []  # built on start, not before
    host.start()
    try:
        assert torch.equal(host.predict(rows_of(2)), rows_of(2) * 3 + 1)
    finally:
        host.stop()
    assert len(Built.instances) == 1


@pytest.mark.timeout(30)
def test_wait_ms_and_wait_n_hold_a_batch_until_wait_n_requests_wait(make_host) -> None:
    model = Doubler()
    # A minute of wait_ms: only wait_n can dispatch these requests within the test's timeout.
    host = make_host(model_obj=model, wait_ms=60_000, wait_n=3, max_batch_size=8)
    assert host.max_delay_s == 60.0
    futures = [host.submit(rows_of(i)) for i in range(3)]
    for i, future in enumerate(futures):
        assert torch.equal(future.result(20), rows_of(i) * 2)
    assert model.sizes == [3]


@pytest.mark.timeout(30)
def test_num_workers_builds_one_model_per_worker_and_runs_them_side_by_side(make_host) -> None:
    entered, release = threading.Event(), threading.Event()

    class Blocking:
        instances: list[Any] = []

        def __init__(self) -> None:
            Blocking.instances.append(self)

        def predict_batch(self, x: Any) -> Any:
            if float(x[0, 0]) == 0.0:
                entered.set()
                assert release.wait(10)
            return x * 2

    host = make_host(Blocking, num_workers=2)
    blocked = host.submit(rows_of(0))
    assert entered.wait(10)
    # The first worker is stuck; the second serves this request meanwhile.
    assert torch.equal(host.predict(rows_of(1), timeout=10), rows_of(1) * 2)
    release.set()
    assert torch.equal(blocked.result(10), rows_of(0) * 2)
    assert len(Blocking.instances) == 2


@pytest.mark.timeout(30)
def test_devices_build_one_model_per_device_and_move_inputs(make_host) -> None:
    class OnDevice:
        devices: list[str] = []

        def __init__(self, device: str) -> None:
            OnDevice.devices.append(device)
            self.device = device

        def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
            assert x.device == torch.device(self.device)
            return x * 2

    host = make_host(OnDevice, devices=["cpu", "cpu"])
    assert host.num_workers == 2 and OnDevice.devices == ["cpu", "cpu"]
    assert torch.equal(host.predict(rows_of(3)), rows_of(3) * 2)


@pytest.mark.timeout(30)
def test_stop_with_a_timeout_reports_a_worker_still_busy(gated) -> None:
    host = ModelHost(model_obj=gated).start()
    running = host.submit(rows_of(1))
    assert gated.entered.wait(10)
    assert host.stop(timeout=0.01) is False  # the worker is blocked in predict_batch
    assert not host.running
    with pytest.raises(HostNotRunningError):
        host.predict(rows_of(2))
    gated.release.set()
    assert torch.equal(running.result(10), rows_of(1) * 2)  # the running batch still ends


@pytest.mark.timeout(30)
def test_a_model_constructor_error_reaches_start_and_the_host_stays_stopped() -> None:
    class Broken:
        def __init__(self) -> None:
            raise OSError("weights not found")

        def predict_batch(self, x: Any) -> Any:
            return x

    host = ModelHost(Broken)
    with pytest.raises(OSError, match="weights not found"):
        host.start()
    assert not host.running
    with pytest.raises(HostNotRunningError):
        host.predict(rows_of(1))
    assert host.stop() is True
