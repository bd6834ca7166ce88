"""The light futures behind ``predict`` and ``predict_async``: Thread- and LoopRequestState.

They stand in for :class:`concurrent.futures.Future`, so they must keep its
state machine: pending -> running -> finished, or pending -> cancelled.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import InvalidStateError

import pytest

from batch_inference._request import LoopRequestState, ThreadRequestState

pytestmark = pytest.mark.timeout(30)


def test_result_blocks_until_another_thread_sets_it() -> None:
    state = ThreadRequestState()
    assert state.set_running_or_notify_cancel()
    waiting = threading.Event()
    got: list[object] = []

    def caller() -> None:
        waiting.set()
        got.append(state.result(timeout=20))

    thread = threading.Thread(target=caller)
    thread.start()
    assert waiting.wait(10)
    assert not state.done()
    state.set_result("answer")
    thread.join(20)
    assert got == ["answer"]
    assert state.done() and state.result() == "answer"  # again, without blocking


def test_result_times_out_while_pending() -> None:
    state = ThreadRequestState()
    with pytest.raises(TimeoutError):
        state.result(timeout=0.01)
    with pytest.raises(TimeoutError):
        state.result(timeout=-1)  # a deadline already past: no wait at all
    assert not state.done()


def test_exception_is_raised_by_result_and_returned_by_exception() -> None:
    state = ThreadRequestState()
    state.set_running_or_notify_cancel()
    error = ValueError("bad row")
    state.set_exception(error)
    with pytest.raises(ValueError, match="bad row"):
        state.result(timeout=1)
    assert state.exception() is error


def test_cancel_only_while_pending() -> None:
    pending = ThreadRequestState()
    assert pending.cancel() and pending.cancelled() and pending.done()
    assert not pending.set_running_or_notify_cancel()
    with pytest.raises(InvalidStateError):
        pending.set_result(1)
    with pytest.raises(asyncio.CancelledError):
        pending.result(timeout=1)  # wakes at once: cancelling released the waiter

    running = ThreadRequestState()
    assert running.set_running_or_notify_cancel() and running.running()
    assert not running.cancel()
    running.set_result(2)
    with pytest.raises(InvalidStateError):
        running.set_result(3)
    assert running.result() == 2


@pytest.mark.parametrize("state_type", [LoopRequestState, ThreadRequestState])
def test_not_done_state_refuses_to_report(state_type: type[LoopRequestState]) -> None:
    state = state_type()
    with pytest.raises(InvalidStateError):
        state.exception()
    with pytest.raises(RuntimeError):
        state._state = 99  # an impossible state is refused, not guessed
        state.set_running_or_notify_cancel()
