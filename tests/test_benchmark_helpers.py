"""The measuring helpers of ``batch_inference.benchmark`` (shared by tutorials and reports)."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import numpy as np
import pytest
import torch

from batch_inference import ConfigurationError
from batch_inference.benchmark import (
    LoadResult,
    async_closed_loop,
    closed_loop,
    environment,
    format_environment,
    offline_batches,
    on_own_thread,
    run_mode,
)
from batch_inference.benchmark.mode import MODE_VARIABLE
from benchmarks.bert import load_bert, make_queries, random_lengths


# ----------------------------------------------------------------------------- mode
@pytest.mark.parametrize(("value", "mode"), [("full", "full"), ("quick", "quick"),
                                             (" QUICK ", "quick"), ("Full", "full")])
def test_run_mode_environment_override(monkeypatch, value: str, mode: str) -> None:
    monkeypatch.setenv(MODE_VARIABLE, value)
    assert run_mode() == mode


def test_run_mode_invalid_override_names_the_value(monkeypatch) -> None:
    monkeypatch.setenv(MODE_VARIABLE, "fast")
    with pytest.raises(ConfigurationError, match=r"BATCH_INFERENCE_MODE .* got 'fast'"):
        run_mode()


@pytest.mark.parametrize("value", [None, "", "  "])
def test_run_mode_default_follows_the_device(monkeypatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv(MODE_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(MODE_VARIABLE, value)
    assert run_mode() == ("full" if torch.cuda.is_available() else "quick")


def test_environment_reports_device_torch_threads_python_mode_and_extras(monkeypatch) -> None:
    monkeypatch.setenv(MODE_VARIABLE, "quick")
    info = environment(weights="MiniLM", queries=400)
    assert list(info)[:5] == ["device", "torch", "torch threads", "python", "mode"]
    assert info["torch"] == torch.__version__
    assert info["torch threads"] == torch.get_num_threads()
    assert info["mode"] == "quick"
    assert info["weights"] == "MiniLM" and info["queries"] == 400
    assert info["device"].startswith("cuda" if torch.cuda.is_available() else "cpu")
    assert environment(mode="full")["mode"] == "full"


def test_format_environment_aligns_keys() -> None:
    text = format_environment({"a": 1, "longer key": "x"})
    assert text.splitlines() == ["a          : 1", "longer key : x"]


# ----------------------------------------------------------------------------- closed_loop
def recording_call() -> tuple[Counter, threading.Lock, object]:
    seen: Counter = Counter()
    lock = threading.Lock()

    def call(i: int, text: str) -> str:
        with lock:
            seen[i] += 1
        return f"{text}-{i}"

    return seen, lock, call


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("count", "clients"), [(50, 7), (3, 10), (1, 1)])
def test_closed_loop_sends_every_query_once_and_keeps_outputs_in_order(
    count: int, clients: int
) -> None:
    seen, _, call = recording_call()
    queries = [(i, "q") for i in range(count)]
    progressed: list[int] = []
    lock = threading.Lock()

    def progress(n: int) -> None:
        with lock:
            progressed.append(n)

    result = closed_loop(call, queries, clients=clients, keep_outputs=True, progress=progress)

    assert isinstance(result, LoadResult)
    assert result.queries == count
    assert seen == Counter(range(count))
    assert result.outputs == [f"q-{i}" for i in range(count)]
    assert sum(progressed) == count
    assert result.latencies_s.shape == (count,) and (result.latencies_s > 0).all()
    assert result.wall_s > 0 and result.qps == pytest.approx(count / result.wall_s)
    assert result.p50_s <= result.p99_s <= result.latencies_s.max()


@pytest.mark.timeout(30)
def test_closed_loop_without_keep_outputs_keeps_none() -> None:
    _, _, call = recording_call()
    assert closed_loop(call, [(i, "q") for i in range(5)], clients=2).outputs == []


@pytest.mark.timeout(30)
def test_closed_loop_runs_its_clients_at_the_same_time() -> None:
    clients = 4
    barrier = threading.Barrier(clients, timeout=10)

    def call(i: int) -> int:
        if i < clients:
            barrier.wait()  # breaks (and fails the run) unless 4 calls are in flight at once
        return i

    result = closed_loop(call, [(i,) for i in range(12)], clients=clients, keep_outputs=True)
    assert result.outputs == list(range(12))


@pytest.mark.timeout(30)
def test_closed_loop_reraises_the_first_error_object() -> None:
    error = RuntimeError("query 13 failed")

    def call(i: int) -> int:
        if i == 13:
            raise error
        return i

    with pytest.raises(RuntimeError) as caught:
        closed_loop(call, [(i,) for i in range(40)], clients=3)
    assert caught.value is error


@pytest.mark.parametrize("clients", [0, -1])
def test_closed_loop_needs_a_client(clients: int) -> None:
    with pytest.raises(ConfigurationError, match=f"clients must be >= 1, got {clients}"):
        closed_loop(lambda: None, [()], clients=clients)


# ----------------------------------------------------------------------------- async_closed_loop
@pytest.mark.timeout(30)
@pytest.mark.parametrize(("count", "concurrency"), [(60, 8), (3, 50)])
def test_async_closed_loop_counts_and_order(count: int, concurrency: int) -> None:
    seen: Counter = Counter()

    async def call(i: int) -> int:
        seen[i] += 1
        await asyncio.sleep(0)
        return i * 10

    result = asyncio.run(
        async_closed_loop(call, [(i,) for i in range(count)], concurrency, keep_outputs=True)
    )
    assert result.queries == count
    assert seen == Counter(range(count))
    assert result.outputs == [i * 10 for i in range(count)]
    assert result.latencies_s.shape == (count,) and (result.latencies_s > 0).all()


@pytest.mark.timeout(30)
def test_async_closed_loop_runs_its_tasks_at_the_same_time() -> None:
    async def main() -> LoadResult:
        barrier = asyncio.Barrier(5)

        async def call(i: int) -> int:
            if i < 5:
                async with asyncio.timeout(10):
                    await barrier.wait()
            return i

        return await async_closed_loop(call, [(i,) for i in range(9)], 5, keep_outputs=True)

    assert asyncio.run(main()).outputs == list(range(9))


@pytest.mark.timeout(30)
def test_async_closed_loop_propagates_errors() -> None:
    error = ValueError("bad query")

    async def call(i: int) -> int:
        if i == 4:
            raise error
        return i

    with pytest.raises(ValueError) as caught:
        asyncio.run(async_closed_loop(call, [(i,) for i in range(10)], 3))
    assert caught.value is error


@pytest.mark.timeout(30)
def test_async_closed_loop_cancels_the_other_clients_when_one_fails() -> None:
    never = asyncio.Event()
    cancelled: list[int] = []

    async def call(i: int) -> int:
        if i == 0:
            await asyncio.sleep(0)  # let the others start waiting first
            raise KeyError("query 0")
        try:
            await never.wait()  # would block forever without the cancellation
        except asyncio.CancelledError:
            cancelled.append(i)
            raise
        return i

    with pytest.raises(KeyError, match="query 0"):
        asyncio.run(async_closed_loop(call, [(i,) for i in range(4)], 4))
    assert sorted(cancelled) == [1, 2, 3]


def test_async_closed_loop_needs_concurrency() -> None:
    async def call() -> None:
        return None

    with pytest.raises(ConfigurationError, match=r"concurrency must be >= 1, got 0"):
        asyncio.run(async_closed_loop(call, [()], 0))


def test_load_result_with_zero_wall_time() -> None:
    result = LoadResult(0, 0.0, np.zeros(0))
    assert result.qps == float("inf")
    assert result.p50_s == 0.0


# ----------------------------------------------------------------------------- offline_batches
def test_offline_batches_runs_each_batch_in_order_and_synchronizes() -> None:
    events: list[object] = []

    def predict_batch(x: int, y: int) -> None:
        events.append((x, y))

    seconds = offline_batches(
        predict_batch, [(1, 2), (3, 4)], synchronize=lambda: events.append("s")
    )
    assert events == ["s", (1, 2), (3, 4), "s"]
    assert seconds >= 0


def test_offline_batches_without_synchronize() -> None:
    calls: list[int] = []
    assert offline_batches(lambda x: calls.append(x), [(1,), (2,), (3,)]) >= 0
    assert calls == [1, 2, 3]


def test_offline_batches_run_off_the_callers_thread() -> None:
    seen: list[threading.Thread] = []
    offline_batches(lambda: seen.append(threading.current_thread()), [(), ()])
    assert len(seen) == 2 and seen[0] is seen[1]
    assert seen[0] is not threading.current_thread()
    assert not seen[0].is_alive()  # it ended, and its OpenMP team with it


def test_on_own_thread_returns_the_result_and_passes_arguments() -> None:
    def where(a: int, b: int = 0) -> tuple[int, str]:
        return a + b, threading.current_thread().name

    total, name = on_own_thread(where, 2, b=3)
    assert total == 5
    assert name != threading.current_thread().name


def test_on_own_thread_reraises_the_error_in_the_caller() -> None:
    def boom() -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError, match="missing"):
        on_own_thread(boom)


# ----------------------------------------------------------------------------- BERT workload
@pytest.mark.parametrize(("low", "high"), [(1, 64), (1, 128), (5, 5), (17, 32)])
def test_random_lengths_stay_within_bounds(low: int, high: int) -> None:
    lengths = random_lengths(2000, low, high, seed=3)
    assert lengths.shape == (2000,)
    assert lengths.min() >= low and lengths.max() <= high
    if high - low >= 1:
        assert lengths.min() == low and lengths.max() == high  # both ends are reachable
    assert np.array_equal(lengths, random_lengths(2000, low, high, seed=3))
    assert not np.array_equal(random_lengths(50, 1, 128, seed=1), random_lengths(50, 1, 128, 2))


@pytest.mark.parametrize(("low", "high"), [(0, 10), (-1, 5), (10, 9)])
def test_random_lengths_bad_bounds_name_them(low: int, high: int) -> None:
    with pytest.raises(ConfigurationError, match=f"low={low}, high={high}"):
        random_lengths(5, low, high)


def test_make_queries_shapes_and_tokens() -> None:
    lengths = [1, 2, 17, 128]
    queries = make_queries(lengths, vocab_size=30522, seed=5)
    assert len(queries) == len(lengths)
    for (ids, mask), n in zip(queries, lengths):
        assert tuple(ids.shape) == (1, n) and tuple(mask.shape) == (1, n)
        assert ids.dtype == torch.int64 and torch.equal(mask, torch.ones_like(ids))
        assert int(ids.min()) >= 1 and int(ids.max()) < 30522
        if n >= 2:
            assert int(ids[0, 0]) == 101 and int(ids[0, -1]) == 102
            assert bool((ids[0, 1:-1] >= 1000).all())
        else:
            assert int(ids[0, 0]) >= 1000
    again = make_queries(lengths, vocab_size=30522, seed=5)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(queries, again))


def test_load_bert_unknown_name_names_it() -> None:
    pytest.importorskip("transformers")
    with pytest.raises(ConfigurationError, match=r"'bert-large'"):
        load_bert("bert-large")


def test_minilm_loads_real_weights(minilm) -> None:
    assert "pretrained" in minilm.weights and "MiniLM" in minilm.weights
    assert minilm.vocab_size == 30522
    assert not minilm.model.training
