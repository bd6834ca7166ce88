"""The light future behind ``predict``, ``predict_async`` and the remote client's calls.

It stands in for :class:`concurrent.futures.Future`, so it must keep its
state machine: pending -> running -> finished, or pending -> cancelled; and
a cancelled one raises :class:`concurrent.futures.CancelledError`.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import CancelledError, InvalidStateError

import pytest

from batch_inference._future import LightFuture, settle

pytestmark = pytest.mark.timeout(30)


def test_result_blocks_until_another_thread_sets_it() -> None:
    state = LightFuture()
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
    state = LightFuture()
    with pytest.raises(TimeoutError):
        state.result(timeout=0.01)
    with pytest.raises(TimeoutError):
        state.result(timeout=-1)  # a deadline already past: no wait at all
    assert not state.done() and not state.wait(0)


def test_exception_is_raised_by_result_and_returned_by_exception() -> None:
    state = LightFuture()
    state.set_running_or_notify_cancel()
    error = ValueError("bad row")
    state.set_exception(error)
    with pytest.raises(ValueError, match="bad row"):
        state.result(timeout=1)
    assert state.exception() is error


def test_cancel_only_while_pending_and_a_cancelled_caller_sees_the_futures_error() -> None:
    pending = LightFuture()
    assert pending.cancel() and pending.cancelled() and pending.done()
    assert not pending.set_running_or_notify_cancel()
    with pytest.raises(InvalidStateError):
        pending.set_result(1)
    with pytest.raises(CancelledError):
        pending.result(timeout=1)  # wakes at once: cancelling released the waiter
    assert not issubclass(asyncio.CancelledError, CancelledError)  # so the type matters

    running = LightFuture()
    assert running.set_running_or_notify_cancel() and running.running()
    assert not running.cancel()
    running.set_result(2)
    with pytest.raises(InvalidStateError):
        running.set_result(3)
    assert running.result() == 2


def test_not_done_state_refuses_to_report() -> None:
    state = LightFuture()
    with pytest.raises(TimeoutError):
        state.exception(timeout=0)
    with pytest.raises(RuntimeError):
        state._state = 99  # an impossible state is refused, not guessed
        state.set_running_or_notify_cancel()


def test_settle_wakes_each_event_loop_once_per_batch() -> None:
    """Outcomes for asyncio callers reach their loop futures in one wake-up per loop."""

    async def main() -> list[object]:
        loop = asyncio.get_running_loop()
        futures = [LightFuture(loop) for _ in range(3)]
        for future in futures:
            future.set_running_or_notify_cancel()
        wakes: list[object] = []
        original = loop.call_soon_threadsafe

        def counting(*args: object) -> object:
            wakes.append(args[0])
            return original(*args)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        error = ValueError("row 2")
        thread = threading.Thread(target=settle, args=(
            [(futures[0], "a", False), (futures[1], "b", False), (futures[2], error, True)],))
        thread.start()
        thread.join(10)
        got = await asyncio.gather(*(f.loop_future for f in futures), return_exceptions=True)
        assert len(wakes) == 1
        return got

    first, second, third = asyncio.run(main())
    assert (first, second) == ("a", "b") and isinstance(third, ValueError)
