"""Nothing lost, nothing hangs: every reliability behaviour, for threads and asyncio tasks.

Each test runs twice, once per front (``front`` fixture): callers are threads
blocked in ``host.predict`` or asyncio tasks awaiting ``host.predict_async``.
Timing is controlled with events: :class:`EchoModel`'s first call blocks on a
gate, so requests pile up behind it and the next batch is known exactly. "At
once" is asserted without a clock: the caller's error arrives while the gate
is still closed, i.e. while the model is still busy.
"""

from __future__ import annotations

import asyncio
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from _reliability_support import (
    BAD,
    AsyncFront,
    Call,
    EchoModel,
    ModelFailure,
    ThreadFront,
    row,
)

from batch_inference import (
    HostBrokenError,
    HostNotRunningError,
    HostStoppedError,
    InvalidRequestError,
    ModelHost,
    OutputMismatchError,
    QueueFullError,
    RequestTimeoutError,
)
from batch_inference.batcher import ConcatBatcher, SeqBatcher

pytestmark = pytest.mark.timeout(60)

Front = ThreadFront | AsyncFront


@pytest.fixture(params=["thread", "asyncio"])
def front(request: pytest.FixtureRequest) -> Iterator[Front]:
    made: Front = ThreadFront() if request.param == "thread" else AsyncFront()
    yield made
    made.close()


@pytest.fixture
def model() -> Iterator[EchoModel]:
    made = EchoModel()
    yield made
    made.release.set()


def queued(host: ModelHost, count: int) -> Callable[[], bool]:
    return lambda: host.stats().queue_depth == count


def pile_up(
    host: ModelHost, model: EchoModel, front: Front, ids: list[int], wait_until: Any,
    marks: dict[int, float] | None = None, **kwargs: Any,
) -> tuple[Call, list[Call]]:
    """Occupy the model with request 0, then queue ``ids`` behind it."""
    first = front.call(host, row(0))
    assert model.entered.wait(10)
    calls = [front.call(host, row(i, (marks or {}).get(i, 0.0)), **kwargs) for i in ids]
    wait_until(queued(host, len(ids)))
    return first, calls


def assert_echo(call: Call, request_id: int) -> None:
    assert torch.equal(call.result(), row(request_id))


# ======================================================================= bad input
def seq_host(make_host: Callable[..., ModelHost], model: Any) -> ModelHost:
    batcher = SeqBatcher(padding_tokens=[0], tensor="pt", max_length=8, dtypes=[torch.int64])
    return make_host(model_obj=model, batcher=batcher, max_batch_size=16)


class IdsModel:
    """``predict_batch(ids) -> ids + 1``, recording every batch; the first call blocks."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.calls: list[torch.Tensor] = []

    def predict_batch(self, ids: torch.Tensor) -> torch.Tensor:
        self.calls.append(ids)
        if len(self.calls) == 1:
            self.entered.set()
            self.release.wait(60)
        return ids + 1


BAD_REQUESTS: list[tuple[str, tuple[Any, ...], str]] = [
    ("wrong count", (torch.ones(1, 3, dtype=torch.int64),) * 2, "takes 1 arguments, got 2"),
    ("wrong rank", (torch.ones(3, dtype=torch.int64),), "has shape (3,)"),
    ("wrong dtype", (torch.ones(1, 3),), "dtype float32, expected int64"),
    ("not a tensor", ([[1, 2, 3]],), "argument 0 is a list"),
    ("empty sequence", (torch.ones(1, 0, dtype=torch.int64),), "length 0"),
    ("too long", (torch.ones(1, 9, dtype=torch.int64),), "length 9 exceeds max_length=8"),
    ("no argument", (), "takes 1 arguments, got 0"),
]


def test_bad_input_is_refused_alone_and_the_batch_is_served(make_host, front, wait_until):
    model = IdsModel()
    host = seq_host(make_host, model)
    try:
        first = front.call(host, torch.full((1, 2), 7))
        assert model.entered.wait(10)
        good = [front.call(host, torch.full((1, n), n)) for n in (1, 3, 5)]
        wait_until(queued(host, 3))
        for name, args, message in BAD_REQUESTS:
            error = front.call(host, *args).error()
            assert isinstance(error, InvalidRequestError), name
            assert message in str(error), (name, str(error))
        assert host.stats().queue_depth == 3  # none of the bad requests was queued
    finally:
        model.release.set()
    assert torch.equal(first.result(), torch.full((1, 2), 8))
    for n, call in zip((1, 3, 5), good):
        assert torch.equal(call.result(), torch.full((1, n), n + 1))
    assert [tuple(c.shape) for c in model.calls] == [(1, 2), (3, 5)]  # the good ones, together


def test_without_dtypes_another_dtype_never_shares_a_batch(make_host, front, wait_until):
    """Without ``dtypes=``, a request of another dtype runs apart: its failure is its own."""

    class FloatOnly(IdsModel):
        def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
            out = super().predict_batch(x)
            if x.dtype != torch.float32:
                raise TypeError(f"expected float32, got {x.dtype}")
            return out

    model = FloatOnly()
    host = make_host(model_obj=model, batcher=ConcatBatcher(), isolate_failures=False)
    first = front.call(host, torch.zeros(1, 2))
    assert model.entered.wait(10)
    calls = [front.call(host, torch.full((1, 2), float(i))) for i in range(3)]
    wait_until(queued(host, 3))
    odd = front.call(host, torch.ones(1, 2, dtype=torch.float64))
    wait_until(queued(host, 4))
    more = [front.call(host, torch.full((1, 2), float(i))) for i in range(3, 5)]
    wait_until(queued(host, 6))
    model.release.set()
    assert first.error() is None
    assert all(torch.equal(c.result(), torch.full((1, 2), i + 1.0))
               for i, c in enumerate(calls + more))
    assert isinstance(odd.error(), TypeError)
    assert [c.dtype for c in model.calls[1:]] == [torch.float32, torch.float64]
    assert model.calls[1].shape[0] == 5  # the five float requests, one batch


# ================================================================ failure isolation
def test_only_failing_requests_get_the_original_exception(make_host, model, front, wait_until):
    host = make_host(model_obj=model, max_batch_size=16)
    ids = list(range(1, 9))
    first, calls = pile_up(host, model, front, ids, wait_until, marks={3: BAD, 6: BAD})
    model.release.set()
    assert_echo(first, 0)
    for i, call in zip(ids, calls):
        if i in (3, 6):
            error = call.error()
            assert isinstance(error, ModelFailure)
            assert str(error) == f"the model refuses ids [{i}]"  # raised on its own
            assert any(error is raised for raised in model.raised)  # the object, not a copy
            frames = [f.name for f in traceback.extract_tb(error.__traceback__)]
            assert "predict_batch" in frames  # with the model's traceback
        else:
            assert_echo(call, i)
    retries = len(model.calls) - 2  # minus the gated call and the batch of 8
    assert 0 < retries <= 2 * len(ids) - 2
    assert host.stats().retries == retries


def test_isolation_retries_are_bounded_by_2n_minus_2(make_host, model, front, wait_until):
    """The worst case: every request fails. n = 8 costs exactly 2n - 2 = 14 retries."""
    host = make_host(model_obj=model, max_batch_size=16)
    ids = list(range(1, 9))
    _, calls = pile_up(host, model, front, ids, wait_until, marks=dict.fromkeys(ids, BAD))
    model.release.set()
    errors = [call.error() for call in calls]
    assert [str(e) for e in errors] == [f"the model refuses ids [{i}]" for i in ids]
    assert len({id(e) for e in errors}) == len(ids)  # each its own exception object
    assert len(model.calls) - 2 == 2 * len(ids) - 2


def test_isolate_failures_false_fails_the_whole_batch_with_one_exception(
    make_host, model, front, wait_until
):
    host = make_host(model_obj=model, max_batch_size=16, isolate_failures=False)
    ids = list(range(1, 6))
    _, calls = pile_up(host, model, front, ids, wait_until, marks={2: BAD})
    model.release.set()
    errors = [call.error() for call in calls]
    assert all(e is model.raised[0] for e in errors)
    assert len(model.calls) == 2  # no retry
    assert host.stats().retries == 0


def test_out_of_memory_retries_smaller_and_lowers_the_batch_limit(make_host, front, wait_until):
    model = EchoModel(oom_above=4)
    host = make_host(model_obj=model, max_batch_size=32, isolate_failures=False)
    try:
        ids = list(range(1, 17))
        first, calls = pile_up(host, model, front, ids, wait_until)
    finally:
        model.release.set()
    for i, call in zip(ids, calls):
        assert_echo(call, i)  # every caller served despite the OOM
    assert host.batch_limit == 4  # 16 -> 8 -> 4: halved on each OOM
    # The gated call, 16 (OOM), 8 (OOM), then pieces of the lowered limit.
    assert [len(c) for c in model.calls] == [1, 16, 8, 4, 4, 4, 4]
    before = len(model.calls)
    later = [front.call(host, row(100 + i)) for i in range(12)]
    for i, call in enumerate(later):
        assert_echo(call, 100 + i)
    assert max(len(c) for c in model.calls[before:]) <= 4  # the limit stays lowered


def test_a_request_too_big_even_alone_gets_the_out_of_memory_error(make_host, front):
    model = EchoModel(gate_first=False, oom_above=1)
    host = make_host(model_obj=model)
    error = front.call(host, torch.stack([row(1)[0], row(2)[0]])).error()
    assert isinstance(error, torch.cuda.OutOfMemoryError)
    assert host.batch_limit == 1
    assert_echo(front.call(host, row(3)), 3)


# ======================================================================== deadlines
def test_timeout_raises_at_once_and_the_request_never_runs(make_host, model, front, wait_until):
    host = make_host(model_obj=model)
    first, calls = pile_up(host, model, front, [1], wait_until)
    late = front.call(host, row(2), timeout=0.05)
    error = late.error()  # arrives while the gate is closed: the model is still busy
    assert not model.release.is_set()
    assert isinstance(error, RequestTimeoutError)
    assert "deadline" in str(error)
    assert host.stats().queue_depth == 1  # removed from the queue at once
    model.release.set()
    assert_echo(first, 0)
    assert_echo(calls[0], 1)
    assert 2 not in model.seen
    assert host.stats().timed_out == 1


def test_default_timeout_applies_to_calls_without_one(make_host, model, front, wait_until):
    host = make_host(model_obj=model, default_timeout_s=0.05)
    first = front.call(host, row(0), timeout=30)
    assert model.entered.wait(10)
    error = front.call(host, row(1)).error()
    assert not model.release.is_set()
    assert isinstance(error, RequestTimeoutError)
    model.release.set()
    assert_echo(first, 0)
    assert 1 not in model.seen


def test_a_deadline_passed_in_the_queue_is_not_run(make_host, model, front, wait_until):
    """A request nobody abandoned (a submitted future) but whose deadline passed is expired."""
    host = make_host(model_obj=model)
    first = front.call(host, row(0))
    assert model.entered.wait(10)
    expired = host.submit(row(1), timeout=0.05)
    # A later call with the same timeout: when it has timed out, so has the earlier one.
    assert isinstance(front.call(host, row(2), timeout=0.05).error(), RequestTimeoutError)
    model.release.set()
    assert isinstance(expired.exception(10), RequestTimeoutError)
    assert_echo(first, 0)
    assert model.seen == {0}


def test_settling_an_expired_request_does_not_hold_the_queue_lock(make_host, model, front):
    """A done-callback of an expired future may submit again (once deadlocked the worker)."""
    host = make_host(model_obj=model)
    first = front.call(host, row(0))
    assert model.entered.wait(10)
    resubmitted: list[Any] = []
    called_back = threading.Event()

    def submit_again(_: Any) -> None:
        resubmitted.append(host.submit(row(3)))  # takes the queue lock
        called_back.set()

    expired = host.submit(row(1), timeout=0.05)
    expired.add_done_callback(submit_again)
    assert isinstance(front.call(host, row(2), timeout=0.05).error(), RequestTimeoutError)
    model.release.set()
    assert isinstance(expired.exception(10), RequestTimeoutError)
    assert called_back.wait(10)
    assert torch.equal(resubmitted[0].result(10), row(3))
    assert_echo(first, 0)


def test_timeout_of_a_running_request_leaves_its_batch_unharmed(
    make_host, model, front, wait_until
):
    host = make_host(model_obj=model)
    model.hold_id = 1
    first = front.call(host, row(0))
    assert model.entered.wait(10)
    impatient = front.call(host, row(1), timeout=1.0)  # long enough to be taken first
    other = front.call(host, row(2))
    wait_until(queued(host, 2))
    model.release.set()
    assert model.held.wait(10)  # requests 1 and 2 run together, held
    assert isinstance(impatient.error(), RequestTimeoutError)  # while the batch runs
    assert not model.unhold.is_set()
    model.unhold.set()
    assert_echo(first, 0)
    assert_echo(other, 2)
    assert model.calls[1] == [1, 2]
    assert_echo(front.call(host, row(3)), 3)


# ===================================================================== cancellation
def test_cancelling_an_unstarted_request_removes_it(make_host, model, front, wait_until):
    host = make_host(model_obj=model)
    first = front.call(host, row(0))
    assert model.entered.wait(10)
    doomed = front.cancellable_call(host, row(1))
    kept = front.cancellable_call(host, row(2))
    wait_until(queued(host, 2))
    doomed.cancel()
    assert isinstance(doomed.error(), asyncio.CancelledError)
    wait_until(queued(host, 1))  # removed from the queue while the model is busy
    assert not model.release.is_set()
    model.release.set()
    assert_echo(first, 0)
    assert_echo(kept, 2)
    assert 1 not in model.seen
    assert host.stats().cancelled == 1


def test_cancelling_a_running_request_harms_no_other(make_host, model, front, wait_until):
    host = make_host(model_obj=model)
    model.hold_id = 1
    first = front.call(host, row(0))
    assert model.entered.wait(10)
    running = front.cancellable_call(host, row(1))
    other = front.cancellable_call(host, row(2))
    wait_until(queued(host, 2))
    model.release.set()
    assert model.held.wait(10)  # requests 1 and 2 run together now
    outcome = running.cancel()
    if isinstance(front, ThreadFront):
        assert outcome is False  # a running future cannot be cancelled
    else:
        assert isinstance(running.error(), asyncio.CancelledError)  # the task ends at once
    model.unhold.set()
    assert_echo(first, 0)
    assert_echo(other, 2)  # its batch-mate was cancelled: no harm
    if isinstance(front, ThreadFront):
        assert_echo(running, 1)  # it finished and its future holds the result
    assert model.calls[1] == [1, 2]
    assert_echo(front.call(host, row(3)), 3)  # the host goes on


# ===================================================================== backpressure
def test_a_full_queue_raises_at_once(make_host, model, front, wait_until):
    host = make_host(model_obj=model, max_queue_size=2)
    first, calls = pile_up(host, model, front, [1, 2], wait_until)
    error = front.call(host, row(3)).error()
    assert not model.release.is_set()
    assert isinstance(error, QueueFullError)
    assert "max_queue_size=2" in str(error)
    model.release.set()
    assert [c.error() for c in [first, *calls]] == [None] * 3
    assert 3 not in model.seen


def test_wait_for_queue_waits_for_room(make_host, model, front, wait_until):
    host = make_host(model_obj=model, max_queue_size=2)
    first, calls = pile_up(host, model, front, [1, 2], wait_until)
    patient = [front.call(host, row(i), wait_for_queue=True) for i in (3, 4, 5)]
    assert not any(c.outcome.done() for c in patient)
    model.release.set()
    for i, call in zip((1, 2, 3, 4, 5), calls + patient):
        assert_echo(call, i)


def test_wait_for_queue_gives_up_at_the_timeout(make_host, model, front, wait_until):
    host = make_host(model_obj=model, max_queue_size=1)
    first, calls = pile_up(host, model, front, [1], wait_until)
    error = front.call(host, row(2), wait_for_queue=True, timeout=0.05).error()
    assert not model.release.is_set()
    assert isinstance(error, QueueFullError)
    model.release.set()
    assert_echo(calls[0], 1)
    assert 2 not in model.seen


def test_a_cancelled_waiter_passes_its_room_on(make_host, model, wait_until):
    """Asyncio waiters for room: cancelling one must not strand the next."""
    front = AsyncFront()
    try:
        host = make_host(model_obj=model, max_queue_size=1)
        first, calls = pile_up(host, model, front, [1], wait_until)
        waiters = [front.call(host, row(i), wait_for_queue=True) for i in (2, 3, 4)]
        waiters[0].cancel()
        assert isinstance(waiters[0].error(), asyncio.CancelledError)
        model.release.set()
        assert_echo(calls[0], 1)
        assert_echo(waiters[1], 3)
        assert_echo(waiters[2], 4)
        assert 2 not in model.seen
    finally:
        front.close()


def test_stop_wakes_callers_waiting_for_room(make_host, model, front, wait_until):
    host = make_host(model_obj=model, max_queue_size=1)
    first, calls = pile_up(host, model, front, [1], wait_until)
    waiting = front.call(host, row(2), wait_for_queue=True)
    stopper = threading.Thread(target=host.stop, kwargs={"cancel_pending": True})
    stopper.start()
    assert isinstance(waiting.error(), HostNotRunningError)  # while the model is busy
    assert isinstance(calls[0].error(), HostStoppedError)
    model.release.set()
    stopper.join(10)
    assert_echo(first, 0)


# ========================================================================= shutdown
def test_stop_drains_every_accepted_request(make_host, model, front, wait_until):
    host = make_host(model_obj=model)
    first, calls = pile_up(host, model, front, [1, 2, 3], wait_until)
    stopped: list[bool] = []
    stopper = threading.Thread(target=lambda: stopped.append(host.stop()))
    stopper.start()
    wait_until(lambda: not host.running)
    assert isinstance(front.call(host, row(4)).error(), HostNotRunningError)  # at once
    model.release.set()
    stopper.join(10)
    assert stopped == [True]
    for i, call in enumerate([first, *calls]):
        assert_echo(call, i)


def test_stop_cancel_pending_answers_every_waiting_caller(make_host, model, front, wait_until):
    host = make_host(model_obj=model)
    first, calls = pile_up(host, model, front, [1, 2, 3], wait_until)
    stopper = threading.Thread(target=host.stop, kwargs={"cancel_pending": True})
    stopper.start()
    for call in calls:  # answered while the model is still busy
        error = call.error()
        assert isinstance(error, HostStoppedError)
        assert "stopped" in str(error)
    assert not model.release.is_set()
    model.release.set()
    stopper.join(10)
    assert not stopper.is_alive()
    assert_echo(first, 0)  # the running request finished
    assert model.seen == {0}


def test_stop_with_a_timeout_returns_while_the_model_runs(make_host, model, front):
    host = make_host(model_obj=model)
    first = front.call(host, row(0))
    assert model.entered.wait(10)
    assert host.stop(timeout=0.01) is False  # the worker is still busy
    model.release.set()
    assert_echo(first, 0)  # still answered
    assert host.stop(timeout=10) is True


def test_predict_after_stop_raises_at_once(make_host, front):
    host = make_host(model_obj=EchoModel(gate_first=False))
    assert_echo(front.call(host, row(1)), 1)
    host.stop()
    for _ in range(2):
        assert isinstance(front.call(host, row(2)).error(), HostNotRunningError)


# ====================================================================== broken host
@pytest.mark.parametrize("fatal", [KeyboardInterrupt, SystemExit])
def test_a_base_exception_breaks_the_host_and_answers_everyone(
    make_host, model, front, wait_until, fatal
):
    model.raise_on_mark = fatal
    host = make_host(model_obj=model, max_batch_size=2)
    first, calls = pile_up(host, model, front, [1, 2, 3, 4, 5], wait_until, marks={1: BAD})
    model.release.set()
    assert_echo(first, 0)
    for call in calls:  # the failing batch [1, 2] and the queued [3, 4, 5]
        error = call.error()
        assert isinstance(error, HostBrokenError)
        assert isinstance(error.__cause__, fatal)
        assert fatal.__name__ in str(error)
    assert host.broken and not host.running
    later = front.call(host, row(6)).error()
    assert isinstance(later, HostBrokenError)
    assert 6 not in model.seen
    assert host.stop(timeout=10) is True


def test_a_dying_scheduler_breaks_the_host(make_host, front):
    class BrokenSelect(ConcatBatcher):
        def select(self, waiting, limits, now_s):  # noqa: ANN001, ANN201
            raise RuntimeError("select failed")

    host = make_host(model_obj=EchoModel(gate_first=False), batcher=BrokenSelect())
    error = front.call(host, row(1)).error()
    assert isinstance(error, HostBrokenError)
    assert "select failed" in str(error)
    assert host.broken


def test_a_base_exception_while_scattering_breaks_the_host(make_host, model, front, wait_until):
    class ExitingUnbatch(ConcatBatcher):
        def unbatch(self, outputs, context):  # noqa: ANN001, ANN201
            if (outputs[:, 1] == BAD).any():
                raise SystemExit("unbatch exited")
            return super().unbatch(outputs, context)

    class PassMarks(EchoModel):
        def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
            with self._lock:
                self.calls.append([int(i) for i in x[:, 0].tolist()])
            return x.clone()

    model = PassMarks()
    host = make_host(model_obj=model, batcher=ExitingUnbatch())
    error = front.call(host, row(1, BAD)).error()
    assert isinstance(error, HostBrokenError)
    assert isinstance(error.__cause__, SystemExit)
    assert host.broken
    assert isinstance(front.call(host, row(2)).error(), HostBrokenError)


# ================================================================= contract checks
@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (lambda x: x[:-1], "with 2 rows along dimension 0, expected 3"),
        (lambda x: torch.cat([x, x]), "with 6 rows along dimension 0, expected 3"),
        (lambda x: {"y": x, "z": x[:1]}, "outputs['z'] with 1 rows along dimension 0, expected 3"),
        (lambda x: None, "of type NoneType, which cannot be split"),
        (lambda x: "text", "of type str, which cannot be split"),
        (lambda x: [1, 2], "list of 2 items, expected 3"),
    ],
    ids=["too-few-rows", "too-many-rows", "dict-entry", "none", "str", "short-list"],
)
def test_an_unsplittable_output_is_an_output_mismatch(
    make_host, model, front, wait_until, output, expected
):
    class Wrong(EchoModel):
        def predict_batch(self, x: torch.Tensor) -> Any:
            return output(super().predict_batch(x))

    model = Wrong()
    host = make_host(model_obj=model)
    try:
        first, calls = pile_up(host, model, front, [1, 2, 3], wait_until)
    finally:
        model.release.set()
    first.error()
    for call in calls:
        error = call.error()
        assert isinstance(error, OutputMismatchError)
        assert expected in str(error), str(error)
    assert host.running  # a contract error is the batch's, not the host's


def test_a_batcher_returning_the_wrong_number_of_results(make_host, front):
    class Short(ConcatBatcher):
        def unbatch(self, outputs, context):  # noqa: ANN001, ANN201
            return super().unbatch(outputs, context)[:-1] or [None, None]

    host = make_host(model_obj=EchoModel(gate_first=False), batcher=Short())
    error = front.call(host, row(1)).error()
    assert isinstance(error, OutputMismatchError)
    assert "returned 2 results for a batch of 1 requests" in str(error)


def test_numpy_requests_are_isolated_too(make_host, front, wait_until):
    class NumpyEcho:
        def __init__(self) -> None:
            self.entered, self.release = threading.Event(), threading.Event()
            self.calls = 0

        def predict_batch(self, x: np.ndarray) -> np.ndarray:
            self.calls += 1
            if self.calls == 1:
                self.entered.set()
                self.release.wait(60)
            if (x < 0).any():
                raise ValueError(f"negative input in {x.ravel().tolist()}")
            return x * 10

    model = NumpyEcho()
    host = make_host(model_obj=model, batcher=ConcatBatcher(tensor="np"))
    try:
        first = front.call(host, np.zeros((1, 1)))
        assert model.entered.wait(10)
        calls = [front.call(host, np.full((1, 1), v)) for v in (1.0, -2.0, 3.0)]
        wait_until(queued(host, 3))
    finally:
        model.release.set()
    assert first.error() is None
    assert calls[0].result()[0, 0] == 10 and calls[2].result()[0, 0] == 30
    assert str(calls[1].error()) == "negative input in [-2.0]"


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan"), "1", True])
def test_a_bad_timeout_is_refused_naming_it(make_host, front, timeout):
    host = make_host(model_obj=EchoModel(gate_first=False))
    error = front.call(host, row(1), timeout=timeout).error()
    assert isinstance(error, InvalidRequestError)
    assert f"got {timeout!r}" in str(error)


def test_an_infinite_timeout_means_no_deadline(make_host, front):
    host = make_host(model_obj=EchoModel(gate_first=False))
    assert_echo(front.call(host, row(1), timeout=float("inf")), 1)
    assert_echo(front.call(host, row(2), timeout=float("inf"), wait_for_queue=True), 2)


def test_a_base_exception_while_forming_a_batch_breaks_the_host(make_host, front):
    """``batcher.batch`` raising SystemExit (on the thread that prepares batches)."""

    class ExitingBatch(ConcatBatcher):
        def batch(self, requests):  # noqa: ANN001, ANN201
            raise SystemExit("batch exited")

    host = make_host(model_obj=EchoModel(gate_first=False), batcher=ExitingBatch())
    error = front.call(host, row(1)).error()
    assert isinstance(error, HostBrokenError)
    assert isinstance(error.__cause__, SystemExit)
    assert host.broken
    assert isinstance(front.call(host, row(2)).error(), HostBrokenError)


@pytest.mark.parametrize("how", ["cancel", "deadline", "stop"])
def test_a_request_taken_ahead_is_still_removable(make_host, model, front, wait_until, how):
    """A full batch is formed (and prepared) while the model runs the previous one; until
    it starts, its requests can still be cancelled, expire, or be answered by stop()."""
    host = make_host(model_obj=model, max_batch_size=2)
    first = front.call(host, row(0))
    assert model.entered.wait(10)
    if how == "deadline":  # a caller that waits with a timeout (predict / predict_async)
        doomed = front.call(host, row(1), timeout=0.2)
    else:
        doomed = front.cancellable_call(host, row(1))
    kept = front.cancellable_call(host, row(2))
    wait_until(queued(host, 2))  # a full batch of 2: the next one, formed ahead
    if how == "cancel":
        doomed.cancel()
        assert isinstance(doomed.error(), asyncio.CancelledError)
    elif how == "deadline":
        assert isinstance(doomed.error(), RequestTimeoutError)
    else:
        stopper = threading.Thread(target=host.stop, kwargs={"cancel_pending": True})
        stopper.start()
        assert isinstance(doomed.error(), HostStoppedError)
        assert isinstance(kept.error(), HostStoppedError)
    assert not model.release.is_set()  # all of it while the model was busy
    model.release.set()
    assert_echo(first, 0)
    if how == "stop":
        stopper.join(10)
        assert model.seen == {0}
    else:
        assert_echo(kept, 2)
        assert 1 not in model.seen
