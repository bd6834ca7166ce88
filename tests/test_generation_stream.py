"""Streaming: tokens read from threads and asyncio are the whole completion, in order."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import CancelledError
from typing import Any

import pytest

pytest.importorskip("transformers")

from _generation_support import GatedModel, prompts, reference, tiny_gpt2

from batch_inference.errors import RequestTimeoutError
from batch_inference.generation import GenerationHost, TokenStream
from batch_inference.generation.hf import HFCausalLM

WAIT_S = 30


@pytest.fixture(scope="module")
def model() -> Any:
    return tiny_gpt2()


@pytest.fixture
def host(model: Any) -> Any:
    made = GenerationHost(model, max_batch_size=8).start()
    yield made
    made.stop(cancel_pending=True, timeout=10)


def test_thread_readers_get_every_token_in_order(model: Any, host: GenerationHost) -> None:
    texts = prompts([3, 8, 1, 12, 5], seed=11)
    budgets = [10, 4, 16, 7, 12]
    streams = [host.stream(p, n) for p, n in zip(texts, budgets)]
    read: dict[int, list[int]] = {}

    def reader(i: int) -> None:
        read[i] = list(streams[i].iter(timeout=WAIT_S))

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(len(streams))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    for i, (stream, text, budget) in enumerate(zip(streams, texts, budgets)):
        whole = stream.result(WAIT_S)
        assert read[i] == whole == reference(model, text, budget)


def test_a_token_is_readable_before_the_completion_ends(model: Any) -> None:
    gated = GatedModel(HFCausalLM(model), gate_at=2)
    with GenerationHost(gated) as host:
        stream = host.stream([4, 5, 6], 10)
        tokens = stream.iter(timeout=WAIT_S)
        assert gated.entered.wait(WAIT_S)
        first_three = [next(tokens) for _ in range(3)]  # prefill, step 0, step 1
        assert not stream.done()
        gated.release.set()
        assert first_three + list(tokens) == stream.result(WAIT_S)
        assert stream.result(0) == reference(model, [4, 5, 6], 10)


def test_iteration_timeout_is_bounded(model: Any) -> None:
    gated = GatedModel(HFCausalLM(model), gate_at=0)
    with GenerationHost(gated) as host:
        stream = host.stream([1], 5)
        tokens = stream.iter(timeout=0.01)
        assert gated.entered.wait(WAIT_S)
        next(tokens)  # the prefill's token is there
        with pytest.raises(TimeoutError):
            next(tokens)  # the next one is held by the gate
        gated.release.set()


def test_asyncio_readers_get_every_token_in_order(model: Any, host: GenerationHost) -> None:
    texts = prompts([2, 9, 4], seed=12)
    budgets = [12, 6, 9]

    async def read(stream: TokenStream) -> list[int]:
        return [token async for token in stream]

    async def main() -> tuple[list[list[int]], list[list[int]]]:
        streams = [host.stream(p, n) for p, n in zip(texts, budgets)]
        async with asyncio.timeout(WAIT_S):
            streamed = await asyncio.gather(*(read(s) for s in streams))
            awaited = await asyncio.gather(
                *(host.generate_async(p, n) for p, n in zip(texts, budgets))
            )
        return streamed, awaited

    streamed, awaited = asyncio.run(main())
    expected = [reference(model, p, n) for p, n in zip(texts, budgets)]
    assert streamed == awaited == expected


def test_two_readers_of_one_stream_both_see_everything(host: GenerationHost) -> None:
    stream = host.stream([7, 8], 9)

    async def both() -> list[list[int]]:
        async def read() -> list[int]:
            return [t async for t in stream]

        async with asyncio.timeout(WAIT_S):
            return list(await asyncio.gather(read(), read()))

    first, second = asyncio.run(both())
    assert first == second == stream.result(WAIT_S) == list(stream.iter(timeout=WAIT_S))


def test_cancelling_the_awaiting_task_cancels_the_request(model: Any) -> None:
    gated = GatedModel(HFCausalLM(model), gate_at=1)
    with GenerationHost(gated) as host:
        stream = host.stream([1, 2], 20)

        async def awaiting() -> list[int]:
            return await stream

        async def main() -> None:
            task = asyncio.ensure_future(awaiting())
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(None, gated.entered.wait, WAIT_S)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        gated.release.set()
        with pytest.raises(CancelledError):
            stream.result(WAIT_S)
        assert stream.cancelled() and len(stream.tokens) == 3


def test_async_stream_raises_the_request_error(model: Any) -> None:
    with GenerationHost(model) as host:
        async def main() -> list[int]:
            stream = host.stream([1, 2], 4, timeout=1e-9)  # past its deadline when taken
            async with asyncio.timeout(WAIT_S):
                return [t async for t in stream]

        with pytest.raises(RequestTimeoutError):
            asyncio.run(main())
