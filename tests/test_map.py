"""host.map and map_async: input order, laziness, failures in place, early close, every host."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from batch_inference.aio import ModelHost as AsyncModelHost
from batch_inference.batcher import (
    BucketSeqBatcher,
    ConcatBatcher,
    LengthAwareBatcher,
    MultiBatcher,
    SeqBatcher,
)
from batch_inference.errors import ConfigurationError, HostNotRunningError, InvalidRequestError

GATE_S = 30.0


class Doubler:
    """``x * 2``; a row holding a negative value fails (``ValueError`` naming it)."""

    def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x < 0).any()):
            raise ValueError(f"negative input {x.min().item()}")
        return x * 2


class OnePerCall(MultiBatcher):
    """A MultiBatcher that sends each request in a call of its own."""

    def batch(self, requests):
        return list(requests), None

    def unbatch(self, outputs, context):
        return list(outputs)


BATCHERS = {
    "ConcatBatcher": lambda: ConcatBatcher(tensor="pt"),
    "SeqBatcher": lambda: SeqBatcher([0], tensor="pt"),
    "BucketSeqBatcher": lambda: BucketSeqBatcher([0], buckets=[3, 6], tensor="pt"),
    "LengthAwareBatcher": lambda: LengthAwareBatcher([0], tensor="pt"),
    "MultiBatcher": OnePerCall,
}


def shuffled_requests(count: int, seed: int = 0) -> list[torch.Tensor]:
    """``(1, length)`` requests of shuffled lengths 1..9; request ``i`` holds ``i + 1``s."""
    lengths = [1 + i % 9 for i in range(count)]
    random.Random(seed).shuffle(lengths)
    return [torch.full((1, n), i + 1) for i, n in enumerate(lengths)]


def counting(sent: list[int]) -> Iterator[torch.Tensor]:
    """An endless input; ``sent[0]`` counts the items it has handed out."""
    for i in itertools.count():
        sent[0] = i + 1
        yield torch.full((1, 1 + i % 4), i + 1)


@pytest.mark.parametrize("name", list(BATCHERS))
def test_results_come_in_input_order_for_every_batcher(make_host, name: str) -> None:
    xs = shuffled_requests(50)
    host = make_host(model_obj=Doubler(), batcher=BATCHERS[name](), max_batch_size=4)
    results = list(host.map(xs, window=12))
    assert len(results) == len(xs)
    for x, y in zip(xs, results):
        assert torch.equal(y, x * 2)


def test_several_iterables_are_the_arguments_of_each_request(make_host) -> None:
    class Add:
        def predict_batch(self, a, b):
            return a + b

    host = make_host(model_obj=Add(), batcher=SeqBatcher([0, 0], tensor="pt"), max_batch_size=4)
    xs = shuffled_requests(20)
    results = list(host.map(xs, [x * 10 for x in xs], window=8))
    assert all(torch.equal(y, x * 11) for x, y in zip(xs, results))


def test_each_read_reaches_the_batcher_sorted_by_length(make_host, gated) -> None:
    xs = [torch.full((1, n), n) for n in [5, 1, 8, 3, 7, 2, 6, 4]]  # a row of n holds n
    host = make_host(model_obj=gated, batcher=SeqBatcher([0], tensor="pt"), max_batch_size=3)
    gated.release.set()
    results = list(host.map(xs, window=8))  # one read: the whole window
    assert all(torch.equal(y, x * 2) for x, y in zip(xs, results))
    order = [int(row[0]) for (batch,) in gated.calls for row in batch]
    assert order == sorted(order)  # each batch is a run of the sorted read: least padding


def test_an_endless_input_is_read_lazily_a_window_ahead(make_host) -> None:
    sent = [0]
    host = make_host(model_obj=Doubler(), batcher=SeqBatcher([0], tensor="pt"), max_batch_size=4)
    mapped = host.map(counting(sent), window=8)
    assert sent[0] == 0  # nothing is read before the first result is asked for
    first = list(itertools.islice(mapped, 20))
    assert [int(y[0, 0]) for y in first] == [2 * (i + 1) for i in range(20)]
    assert sent[0] <= 20 + 8  # never more than the window ahead of what was taken
    mapped.close()


def test_an_input_that_raises_midway_raises_after_every_earlier_result(make_host) -> None:
    def broken() -> Iterator[torch.Tensor]:
        yield from shuffled_requests(10)
        raise KeyError("row 10 is unreadable")

    host = make_host(model_obj=Doubler(), batcher=SeqBatcher([0], tensor="pt"), max_batch_size=4)
    got = []
    with pytest.raises(KeyError, match="row 10 is unreadable"):
        for y in host.map(broken(), window=4):
            got.append(y)
    assert [int(y[0, 0]) for y in got] == [2 * (i + 1) for i in range(10)]


def test_a_failing_item_is_returned_in_its_place(make_host) -> None:
    xs = shuffled_requests(12)
    xs[5] = -xs[5]
    host = make_host(model_obj=Doubler(), batcher=SeqBatcher([0], tensor="pt"), max_batch_size=4)
    results = list(host.map(xs, window=6, return_exceptions=True))
    assert isinstance(results[5], ValueError) and "negative input -6" in str(results[5])
    assert all(torch.equal(y, x * 2) for i, (x, y) in enumerate(zip(xs, results)) if i != 5)


def test_a_refused_item_is_returned_in_its_place(make_host) -> None:
    xs: list[Any] = shuffled_requests(6)
    xs[2] = torch.ones(3)  # no row dimension: the batcher refuses it before it is queued
    host = make_host(model_obj=Doubler(), batcher=SeqBatcher([0], tensor="pt"), max_batch_size=4)
    results = list(host.map(xs, return_exceptions=True))
    assert isinstance(results[2], InvalidRequestError) and "shape (3,)" in str(results[2])
    assert all(torch.equal(results[i], xs[i] * 2) for i in (0, 1, 3, 4, 5))


def test_a_failing_item_raises_at_its_position_after_every_earlier_result(make_host) -> None:
    xs = shuffled_requests(12)
    xs[5] = -xs[5]
    host = make_host(model_obj=Doubler(), batcher=SeqBatcher([0], tensor="pt"), max_batch_size=4)
    got = []
    with pytest.raises(ValueError, match="negative input -6"):
        for y in host.map(xs, window=6):
            got.append(y)
    assert len(got) == 5 and all(torch.equal(y, x * 2) for x, y in zip(xs, got))


class SecondCallWaits:
    """``x * 2``; the second call signals ``entered`` and waits for ``release``."""

    def __init__(self) -> None:
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()

    def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 2:
            self.entered.set()
            self.release.wait(GATE_S)
        return x * 2


def test_closing_early_cancels_what_has_not_started(make_host) -> None:
    model = SecondCallWaits()
    host = make_host(model_obj=model, batcher=ConcatBatcher(tensor="pt"), max_batch_size=1)
    mapped = host.map([torch.full((1, 1), i) for i in range(8)], window=8)
    try:
        assert int(next(mapped)[0, 0]) == 0  # the first call; the second now holds the model
        assert model.entered.wait(GATE_S)
        mapped.close()
    finally:
        model.release.set()
    assert host.stop(timeout=GATE_S)  # drains: every request left ran or was cancelled
    stats = host.stats()
    # Item 1 was running; at most one more batch was chosen ahead of it: the rest were dropped.
    assert model.calls <= 3
    assert stats.cancelled == 8 - model.calls
    assert stats.completed == model.calls


def test_breaking_out_of_the_loop_cancels_the_rest(make_host) -> None:
    model = SecondCallWaits()
    host = make_host(model_obj=model, batcher=ConcatBatcher(tensor="pt"), max_batch_size=1)
    try:
        for _ in host.map((torch.ones(1, 1) for _ in range(100)), window=10):
            assert model.entered.wait(GATE_S)
            break  # the loop drops the generator, which closes it
    finally:
        model.release.set()
    assert host.stop(timeout=GATE_S)
    assert model.calls <= 3 and host.stats().cancelled == 10 - model.calls


def test_a_host_stopped_midway_raises_after_the_results_it_finished(make_host) -> None:
    host = make_host(model_obj=Doubler(), batcher=ConcatBatcher(tensor="pt"), max_batch_size=4)
    got = []
    with pytest.raises(HostNotRunningError):
        for y in host.map((torch.full((1, 1), i) for i in itertools.count()), window=4):
            got.append(int(y[0, 0]))
            if len(got) == 6:
                host.stop()  # drains what was queued
    assert got[:6] == [0, 2, 4, 6, 8, 10] and got == [2 * i for i in range(len(got))]


def test_window_is_checked_when_map_is_called(make_host) -> None:
    host = make_host(model_obj=Doubler(), batcher=ConcatBatcher(tensor="pt"))
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ConfigurationError, match=f"window must be .* got {bad!r}"):
            host.map([torch.ones(1, 1)], window=bad)
    with pytest.raises(ConfigurationError, match="at least one iterable"):
        host.map()


def test_progress_shows_items_and_rate(make_host, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tqdm")
    host = make_host(model_obj=Doubler(), batcher=ConcatBatcher(tensor="pt"))
    assert len(list(host.map([torch.ones(1, 1)] * 7, progress=True))) == 7
    err = capsys.readouterr().err
    assert "7/7" in err and "item/s" in err


def test_progress_without_tqdm_is_a_clear_error(make_host, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import fails as if not installed
    host = make_host(model_obj=Doubler(), batcher=ConcatBatcher(tensor="pt"))
    with pytest.raises(ConfigurationError, match="progress=True needs tqdm"):
        host.map([torch.ones(1, 1)], progress=True)


# ------------------------------------------------------------------ asyncio
def test_map_async_yields_in_input_order_from_plain_and_async_inputs(make_host) -> None:
    xs = shuffled_requests(30)
    host = make_host(model_obj=Doubler(), batcher=SeqBatcher([0], tensor="pt"), max_batch_size=4)

    async def source() -> Any:
        for x in xs:
            yield x

    async def main() -> tuple[list[Any], list[Any]]:
        plain = [y async for y in host.map_async(xs, window=8)]
        streamed = [y async for y in host.map_async(source(), window=8)]
        return plain, streamed

    for results in asyncio.run(main()):
        assert all(torch.equal(y, x * 2) for x, y in zip(xs, results))


def test_map_async_returns_exceptions_in_place_and_closing_cancels(make_host) -> None:
    xs = shuffled_requests(8)
    xs[3] = -xs[3]
    host = make_host(model_obj=Doubler(), batcher=ConcatBatcher(tensor="pt"), max_batch_size=1)

    async def main() -> list[Any]:
        return [y async for y in host.map_async(xs, return_exceptions=True)]

    results = asyncio.run(main())
    assert isinstance(results[3], ValueError)
    assert all(torch.equal(results[i], xs[i] * 2) for i in range(8) if i != 3)

    model2 = SecondCallWaits()
    host2 = make_host(model_obj=model2, batcher=ConcatBatcher(tensor="pt"), max_batch_size=1)

    async def close_early() -> None:
        async with contextlib.aclosing(host2.map_async(
                [torch.full((1, 1), i) for i in range(8)], window=8)) as mapped:
            async for _ in mapped:
                await asyncio.get_running_loop().run_in_executor(None, model2.entered.wait, GATE_S)
                break
        for _ in range(5000):  # the cancelled tasks drop their requests on their next step
            if host2.stats().queue_depth == 0:
                break
            await asyncio.sleep(0.001)
        left.append(host2.stats().queue_depth)  # before the model is let go
        model2.release.set()

    left: list[int] = []
    try:
        asyncio.run(close_early())
    finally:
        model2.release.set()
    assert left == [0]
    assert host2.stop(timeout=GATE_S)
    assert model2.calls <= 3 and host2.stats().cancelled == 8 - model2.calls


def test_the_asyncio_host_maps() -> None:
    xs = shuffled_requests(20)

    async def main() -> list[Any]:
        async with AsyncModelHost(model_obj=Doubler(), batcher=SeqBatcher([0], tensor="pt"),
                                  max_batch_size=4, wait_ms=0) as host:
            return [y async for y in host.map(xs, window=8)]

    results = asyncio.run(main())
    assert all(torch.equal(y, x * 2) for x, y in zip(xs, results))


# ------------------------------------------------------------------ remote host
_PORTS = itertools.count(30000 + os.getpid() % 10000)


@pytest.fixture
def remote_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    """``remote_pair(batcher)``: a serving RemoteModelHost and a client on one port."""
    pytest.importorskip("zmq")
    from batch_inference.remote import RemoteModelHost

    monkeypatch.setenv("BATCH_INFERENCE_RUNTIME_DIR", str(tmp_path / "rt"))
    made: list[Any] = []

    def pair(batcher: Any) -> tuple[Any, Any]:
        port = next(_PORTS)
        server = RemoteModelHost(Doubler, port, batcher, max_batch_size=4, wait_ms=0).start()
        made.append(server)
        client = RemoteModelHost(Doubler, port, batcher, max_batch_size=4, wait_ms=0).start()
        made.append(client)
        assert server.is_server and not client.is_server
        return server, client

    yield pair
    for host in reversed(made):  # clients first
        host.stop(timeout=5)


def test_the_remote_host_maps_in_input_order_with_failures_in_place(remote_pair) -> None:
    from batch_inference.errors import RemoteModelError

    server, client = remote_pair(SeqBatcher([0], tensor="pt"))
    xs = shuffled_requests(40)
    xs[7] = -xs[7]
    from_client = list(client.map(xs, window=12, return_exceptions=True))
    from_server = list(server.map(xs, window=12, return_exceptions=True))
    for results in (from_client, from_server):
        assert all(torch.equal(y, x * 2) for i, (x, y) in enumerate(zip(xs, results)) if i != 7)
    assert isinstance(from_client[7], RemoteModelError) and "negative input -8" in str(
        from_client[7])
    assert isinstance(from_server[7], ValueError)  # the serving process: the model's own error
    got = []
    with pytest.raises(RemoteModelError, match="negative input -8"):
        for y in client.map(xs, window=12):
            got.append(y)
    assert len(got) == 7
