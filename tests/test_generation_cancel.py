"""Every way a caller gives up frees its row at the next step; a bad prompt fails alone.

The decoding is pinned with :class:`GatedModel`: the victim starts alone, step 0
blocks while a second request queues (it joins at the next boundary), step 2
blocks while the test gives the victim up. Step 3 must then run without the
victim's row: ``step_rows`` is ``[1, 2, 2, 1, ...]``.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import pytest

pytest.importorskip("transformers")

from _generation_support import GatedModel, prompts, reference, tiny_gpt2

from batch_inference.errors import HostBrokenError
from batch_inference.generation import GenerationHost
from batch_inference.generation.hf import HFCausalLM

WAIT_S = 30
BUDGET = 20


@pytest.fixture(scope="module")
def model() -> Any:
    return tiny_gpt2()


class Pinned:
    """A host whose victim is at step 2 (blocked) beside one other running row."""

    def __init__(self, model: Any) -> None:
        self.gated = GatedModel(HFCausalLM(model), gate_at=0, more_gates=(2,))
        self.host = GenerationHost(self.gated, max_batch_size=4).start()
        self.victim_prompt, self.other_prompt = prompts([5, 8], seed=31)

    def start(self) -> Any:
        """Queue the victim and the other; return the victim's stream at step 2 (blocked)."""
        victim = self.host.stream(self.victim_prompt, BUDGET)
        assert self.gated.entered.wait(WAIT_S)
        self.other = self.host.stream(self.other_prompt, BUDGET)
        self.gated.release.set()
        assert self.gated.gates[2][0].wait(WAIT_S)
        return victim

    def release_and_check(self, model: Any) -> None:
        """Open step 2; the victim's row must be gone from step 3 on, the other exact."""
        self.gated.gates[2][1].set()
        assert self.other.result(WAIT_S) == reference(model, self.other_prompt, BUDGET)
        assert self.gated.step_rows[:4] == [1, 2, 2, 1]
        assert self.host.stop(timeout=WAIT_S)
        stats = self.host.stats()
        assert stats.cancelled == 1 and stats.completed == 1

    def close(self) -> None:
        self.gated.open_all()
        self.host.stop(cancel_pending=True, timeout=10)


@pytest.fixture
def pinned(model: Any) -> Any:
    made = Pinned(model)
    yield made
    made.close()


def _dropped(ref: weakref.ref) -> bool:
    gc.collect()
    return ref() is None


def test_stream_cancel_frees_the_row(model: Any, pinned: Pinned) -> None:
    victim = pinned.start()
    victim.cancel()
    pinned.release_and_check(model)
    # its tokens: the prefill's and steps 0 to 2's (the step it was cancelled in)
    assert victim.cancelled() and victim.tokens == reference(model, victim.prompt, 4)


def test_breaking_out_of_a_for_loop_and_dropping_the_stream_frees_the_row(
    model: Any, pinned: Pinned
) -> None:
    read = []
    for token in pinned.start():  # the stream is referenced by the loop only
        read.append(token)
        if len(read) == 2:
            break
    pinned.release_and_check(model)
    assert read == reference(model, pinned.victim_prompt, 2)


def test_breaking_out_while_holding_the_stream_keeps_the_row(model: Any, pinned: Pinned) -> None:
    victim = pinned.start()
    for _ in victim:
        break  # another reader, or result(), may still want the rest
    pinned.gated.gates[2][1].set()
    assert victim.result(WAIT_S) == reference(model, victim.prompt, BUDGET)
    stream_ref = weakref.ref(victim)
    del victim
    assert _dropped(stream_ref)  # dropping a finished stream changes nothing
    assert pinned.host.stats().cancelled == 0


def test_cancelling_the_task_that_iterates_frees_the_row(model: Any, pinned: Pinned) -> None:
    victim = pinned.start()

    async def main() -> list[int]:
        read: list[int] = []
        three = asyncio.Event()

        async def reader() -> None:
            async for token in victim:
                read.append(token)
                if len(read) == 3:  # all that exists until step 2 is released
                    three.set()

        task = asyncio.create_task(reader())
        async with asyncio.timeout(WAIT_S):
            await three.wait()
            await asyncio.sleep(0)  # the reader now awaits its fourth token
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        return read

    read = asyncio.run(main())
    assert victim.cancel_requested  # the stream is still held here: cancelled explicitly
    pinned.release_and_check(model)
    assert read == reference(model, victim.prompt, 3)
    assert victim.tokens == reference(model, victim.prompt, 4)


def test_an_asyncio_timeout_around_async_for_frees_the_row(model: Any, pinned: Pinned) -> None:
    victim = pinned.start()

    async def main() -> list[int]:
        read: list[int] = []
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):  # step 2 stays blocked: it must run out
                async for token in victim:
                    read.append(token)
        return read

    assert asyncio.run(main()) == reference(model, victim.prompt, 3)
    pinned.release_and_check(model)


def test_an_iter_timeout_frees_the_row(model: Any, pinned: Pinned) -> None:
    victim = pinned.start()
    read = []
    with pytest.raises(TimeoutError, match="no token within"):
        for token in victim.iter(timeout=0.05):  # step 2 stays blocked: it must run out
            read.append(token)
    assert read == reference(model, victim.prompt, 3)
    pinned.release_and_check(model)


def test_breaking_out_of_async_for_over_a_dropped_stream_frees_the_row(
    model: Any, pinned: Pinned
) -> None:
    held = [pinned.start()]
    stream_ref = weakref.ref(held[0])

    async def main() -> None:
        async for _ in held.pop():  # from here on only the async generator holds it
            break
        for _ in range(100):  # asyncio closes the abandoned async generator soon after
            if _dropped(stream_ref):
                return
            await asyncio.sleep(0)
        raise AssertionError("the async generator still holds the stream")

    asyncio.run(main())
    pinned.release_and_check(model)


def test_a_stream_dropped_while_queued_never_runs(model: Any) -> None:
    gated = GatedModel(HFCausalLM(model), gate_at=0)
    host = GenerationHost(gated, max_batch_size=1).start()
    try:
        running = host.stream([3, 4], 5)
        assert gated.entered.wait(WAIT_S)
        host.stream([5, 6], 5)  # dropped at once
        gc.collect()
        gated.release.set()
        assert running.result(WAIT_S) == reference(model, [3, 4], 5)
    finally:
        gated.open_all()
        assert host.stop(timeout=WAIT_S)
    assert [c for c in gated.calls if c[0] == "prefill"] == [("prefill", 1)]
    assert host.stats().cancelled == 1


# ---------------------------------------------------------------- failure isolation
class Poisoned:
    """A step-wise model whose prefill raises for any group holding a poisoned prompt."""

    def __init__(self, inner: Any, poison: int, error: BaseException | None = None) -> None:
        self.inner = inner
        self.max_positions = inner.max_positions
        self.vocab_size = inner.vocab_size
        self.poison = poison
        self.error = error
        self.prefills: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def prefill(self, prompts: Sequence[Sequence[int]]) -> Any:
        self.prefills.append(len(prompts))
        if any(p[0] == self.poison for p in prompts):
            raise self.error or ValueError(f"poisoned prompt (starts with {self.poison})")
        return self.inner.prefill(prompts)

    def step(self, batch: Any, tokens: Sequence[int]) -> Any:
        if not self.entered.is_set():
            self.entered.set()
            if not self.release.wait(WAIT_S):
                raise TimeoutError("the test never released the first step")
        return self.inner.step(batch, tokens)


@pytest.mark.parametrize("poisoned_at", [(3,), (0, 7), (2, 3, 4)])
def test_a_poisoned_prefill_fails_only_its_callers(
    model: Any, poisoned_at: tuple[int, ...]
) -> None:
    poisoned = Poisoned(HFCausalLM(model), poison=13)
    host = GenerationHost(poisoned, max_batch_size=16).start()
    try:
        first = host.stream([1, 2], 6)
        assert poisoned.entered.wait(WAIT_S)  # 8 callers queue while step 0 blocks
        texts = [([13] if i in poisoned_at else [14]) + p
                 for i, p in enumerate(prompts([3, 6, 2, 9, 4, 5, 7, 1], seed=32))]
        streams = [host.stream(t, 6) for t in texts]
        poisoned.release.set()
        for i, (text, stream) in enumerate(zip(texts, streams)):
            if i in poisoned_at:
                with pytest.raises(ValueError, match="poisoned prompt"):
                    stream.result(WAIT_S)
            else:
                assert stream.result(WAIT_S) == reference(model, text, 6)
        assert first.result(WAIT_S) == reference(model, [1, 2], 6)
    finally:
        poisoned.release.set()
        assert host.stop(timeout=WAIT_S)
    stats = host.stats()
    assert stats.failed == len(poisoned_at) and stats.completed == 9 - len(poisoned_at)
    assert poisoned.prefills[1] == 8  # the whole group first
    assert len(poisoned.prefills) - 2 <= 2 * 8 - 2  # bisection's bound


def test_a_base_exception_in_a_prefill_still_breaks_the_host(model: Any) -> None:
    poisoned = Poisoned(HFCausalLM(model), poison=13, error=KeyboardInterrupt())
    host = GenerationHost(poisoned, max_batch_size=8).start()
    try:
        first = host.stream([1, 2], 6)
        assert poisoned.entered.wait(WAIT_S)
        streams = [host.stream(t, 4) for t in ([14, 2], [13, 5], [14, 6])]
        poisoned.release.set()
        for stream in [first, *streams]:
            with pytest.raises(HostBrokenError, match="KeyboardInterrupt"):
                stream.result(WAIT_S)
        assert poisoned.prefills == [1, 3]  # no bisection: the host is broken
    finally:
        poisoned.release.set()
        host.stop(timeout=WAIT_S)


def test_a_failed_step_fails_its_rows_and_the_queued_request_runs(model: Any) -> None:
    gated = GatedModel(HFCausalLM(model), gate_at=1, fail_at=1, error=RuntimeError("bad step"))
    host = GenerationHost(gated, max_batch_size=2).start()
    try:
        running = [host.stream(p, 10) for p in prompts([3, 4], seed=33)]
        assert gated.entered.wait(WAIT_S)
        queued = host.stream([9, 8, 7], 6)
        gated.release.set()
        for stream in running:
            with pytest.raises(RuntimeError, match="bad step"):
                stream.result(WAIT_S)
        assert queued.result(WAIT_S) == reference(model, [9, 8, 7], 6)
        assert host.running
    finally:
        gated.open_all()
        assert host.stop(timeout=WAIT_S)
    assert host.stats().failed == 2 and host.stats().completed == 1

