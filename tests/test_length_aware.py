"""LengthAwareBatcher: its pure select() policy, and its answers with real MiniLM weights."""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from batch_inference import ConfigurationError, InvalidRequestError
from batch_inference.batcher import (
    BatchLimits,
    BucketSeqBatcher,
    LengthAwareBatcher,
    RequestInfo,
    Waiting,
)


def waiting_of(lengths: list[int], rows: list[int] | None = None, key: Any = None,
               enqueued_s: list[float] | None = None) -> list[Waiting]:
    rows = rows or [1] * len(lengths)
    times = enqueued_s or [float(i) for i in range(len(lengths))]
    return [Waiting(RequestInfo(length, r, key), t) for length, r, t in zip(lengths, rows, times)]


def padded(items: list[Waiting], indices: tuple[int, ...]) -> int:
    infos = [items[i].info for i in indices]
    return max(i.length for i in infos) * sum(i.rows for i in infos)


# ---------------------------------------------------------------------- configuration
@pytest.mark.parametrize("bad", [-1, math.inf, math.nan, "64", True])
def test_call_cost_tokens_is_validated(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="call_cost_tokens"):
        LengthAwareBatcher([0], call_cost_tokens=bad)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_window_is_validated(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="window"):
        LengthAwareBatcher([0], window=bad)


# ---------------------------------------------------------------------- select(), by example
def test_empty_queue_selects_nothing() -> None:
    assert LengthAwareBatcher([0]).select([], BatchLimits(8), 0.0).indices == ()


def test_equal_lengths_fill_a_whole_batch() -> None:
    items = waiting_of([20] * 50)
    selection = LengthAwareBatcher([0]).select(items, BatchLimits(32), 100.0)
    assert selection.indices == tuple(range(32))


def test_batches_do_not_mix_short_and_long() -> None:
    # The oldest is short: its batch holds the short ones only, not the 60s.
    items = waiting_of([5, 60, 6, 61, 5, 62, 7, 60])
    selection = LengthAwareBatcher([0]).select(items, BatchLimits(32), 100.0)
    assert sorted(items[i].info.length for i in selection.indices) == [5, 5, 6, 7]


def test_padding_cheaper_than_a_call_is_accepted() -> None:
    # 4 requests of 10 and one of 11: padding costs 4 tokens, a second call 64.
    items = waiting_of([10, 10, 11, 10, 10])
    selection = LengthAwareBatcher([0], call_cost_tokens=64).select(items, BatchLimits(8), 9.0)
    assert sorted(selection.indices) == [0, 1, 2, 3, 4]
    # With free calls, padding is never worth it.
    selection = LengthAwareBatcher([0], call_cost_tokens=0).select(items, BatchLimits(8), 9.0)
    assert sorted(selection.indices) == [0, 1, 3, 4]


def test_token_budget_bounds_a_batch() -> None:
    items = waiting_of([16] * 10)
    selection = LengthAwareBatcher([0]).select(items, BatchLimits(32, max_batch_tokens=64), 9.0)
    assert len(selection.indices) == 4
    assert padded(items, selection.indices) <= 64


def test_a_request_longer_than_the_budget_still_runs_alone() -> None:
    items = waiting_of([100, 100])
    selection = LengthAwareBatcher([0]).select(items, BatchLimits(32, max_batch_tokens=64), 9.0)
    assert selection.indices == (0,)


def test_rows_count_towards_the_token_budget() -> None:
    items = waiting_of([8, 8, 8], rows=[3, 3, 3])
    selection = LengthAwareBatcher([0]).select(items, BatchLimits(32, max_batch_tokens=48), 9.0)
    assert len(selection.indices) == 2  # 6 rows x 8 = 48 tokens


def test_keys_never_mix() -> None:
    items = waiting_of([10, 10, 10, 10]) + waiting_of([10, 10], key="other")
    selection = LengthAwareBatcher([0]).select(items, BatchLimits(32), 9.0)
    assert sorted(selection.indices) == [0, 1, 2, 3]


def test_the_oldest_requests_run_goes_first_before_and_after_the_delay() -> None:
    # The oldest (length 40) pads badly with the eight 12s: it is cut apart from them, and
    # its run goes first, although better packed batches wait (the window is swept in
    # arrival order).
    items = waiting_of([40] + [12] * 8, enqueued_s=[0.0] + [0.1] * 8)
    limits = BatchLimits(32, max_delay_s=1.0)
    for now_s in (0.5, 1.05):  # before the oldest is due, and when only it is
        selection = LengthAwareBatcher([0]).select(items, limits, now_s=now_s)
        assert [items[i].info.length for i in selection.indices] == [40]
    rest = items[1:]
    selection = LengthAwareBatcher([0]).select(rest, limits, now_s=0.5)
    assert sorted(selection.indices) == list(range(8))
    # Once all nine are due at once, they all go together: none waits another batch.
    selection = LengthAwareBatcher([0]).select(items, limits, now_s=1.2)
    assert sorted(selection.indices) == list(range(9))


def test_requests_due_together_share_one_batch() -> None:
    # A 40 and a 12 have both waited max_delay_s; the 12s behind them have not. The two due
    # requests go together, with the 12s of the longest one's run (no request due is left).
    items = waiting_of([40, 12, 12, 12], enqueued_s=[0.0, 0.0, 0.9, 0.9])
    limits = BatchLimits(32, max_delay_s=1.0)
    selection = LengthAwareBatcher([0]).select(items, limits, now_s=1.0)
    assert {0, 1} <= set(selection.indices)


def test_ahead_of_a_busy_model_only_a_full_batch_is_chosen() -> None:
    batcher = LengthAwareBatcher([0])
    partial = waiting_of([12] * 5)
    assert batcher.select(partial, BatchLimits(8, model_busy=True), 0.0).indices == ()
    full = waiting_of([12] * 9)
    selection = batcher.select(full, BatchLimits(8, model_busy=True), 0.0)
    assert selection.indices == tuple(range(8))
    by_tokens = waiting_of([30] * 3)
    selection = batcher.select(by_tokens, BatchLimits(8, 64, model_busy=True), 0.0)
    assert len(selection.indices) == 2  # a third would pass 64 tokens: it cannot grow


def test_ahead_prefers_the_oldest_requests_full_batch() -> None:
    items = waiting_of([50] + [10] * 4 + [50] * 3)
    selection = LengthAwareBatcher([0]).select(items, BatchLimits(4, model_busy=True), 0.0)
    assert sorted(selection.indices) == [0, 5, 6, 7]


def test_only_the_window_is_considered() -> None:
    items = waiting_of([10] * 3 + [30] * 20)
    selection = LengthAwareBatcher([0], window=4).select(items, BatchLimits(2), 9.0)
    assert all(i < 4 for i in selection.indices)


# ---------------------------------------------------------------------- select(), properties
lengths_st = st.lists(st.integers(1, 64), min_size=1, max_size=80)


@settings(max_examples=150, deadline=None)
@given(
    lengths=lengths_st,
    max_batch_size=st.integers(1, 32),
    budget=st.one_of(st.none(), st.integers(1, 2048)),
    delay=st.sampled_from([0.0, 0.5, 5.0]),
    now=st.floats(0, 200),
    cost=st.sampled_from([0, 8, 64, 1000]),
)
def test_select_respects_the_contract(
    lengths: list[int], max_batch_size: int, budget: int | None, delay: float, now: float,
    cost: int,
) -> None:
    items = waiting_of(lengths)
    limits = BatchLimits(max_batch_size, budget, delay)
    chosen = LengthAwareBatcher([0], call_cost_tokens=cost).select(items, limits, now).indices
    # Never idles while requests wait; valid, distinct indices.
    assert chosen
    assert len(set(chosen)) == len(chosen)
    assert all(0 <= i < len(items) for i in chosen)
    # Within the limits (a single request may pass the token budget alone).
    assert len(chosen) <= max_batch_size
    if budget is not None and len(chosen) > 1:
        assert padded(items, chosen) <= budget
    # Unless several due requests are flushed together, a contiguous run of the
    # length-sorted window: nothing left out lies strictly inside it.
    window = set(range(min(len(items), 4 * max_batch_size)))
    flushing = delay > 0 and sum(now - items[i].enqueued_s >= delay for i in window) > 1
    if not flushing:
        low = min(lengths[i] for i in chosen)
        high = max(lengths[i] for i in chosen)
        assert not any(low < lengths[i] < high for i in window - set(chosen))
    # Once the oldest request is due, it is in the batch; with a delay, so is every due
    # request that fits.
    due = [i for i in range(len(items)) if now - items[i].enqueued_s >= delay]
    if due:
        assert 0 in chosen
    if delay > 0 and budget is None and len(due) <= max_batch_size:
        assert set(due) <= set(chosen)


@settings(max_examples=100, deadline=None)
@given(lengths=lengths_st, max_batch_size=st.integers(1, 32))
def test_ahead_selects_only_full_batches(lengths: list[int], max_batch_size: int) -> None:
    items = waiting_of(lengths)
    limits = BatchLimits(max_batch_size, model_busy=True)
    chosen = LengthAwareBatcher([0]).select(items, limits, 1e9).indices
    assert chosen == () or len(chosen) == max_batch_size


@pytest.mark.parametrize(("clients", "max_batch_size", "delay_s"),
                         [(24, 8, 2.0), (24, 8, 8.0), (64, 32, 4.0), (64, 32, 16.0)])
def test_no_request_waits_more_than_one_batch_beyond_the_delay(
    clients: int, max_batch_size: int, delay_s: float
) -> None:
    """A simulated closed loop (fake clock): each batch takes 1 s.

    Every request's batch starts at most max_delay_s + one batch after it arrived.
    """
    rng = np.random.default_rng(0)
    batcher = LengthAwareBatcher([0])
    limits = BatchLimits(max_batch_size, max_delay_s=delay_s)
    now, arrivals = 0.0, 0
    queue: list[Waiting] = []
    for _ in range(clients):  # each client sends one request at a time
        queue.append(Waiting(RequestInfo(int(rng.integers(1, 65))), now))
    worst = 0.0
    while arrivals < 2000:
        chosen = batcher.select(queue, limits, now).indices
        assert chosen
        batch = [queue[i] for i in chosen]
        worst = max(worst, max(now - w.enqueued_s for w in batch))
        queue = [w for i, w in enumerate(queue) if i not in set(chosen)]
        now += 1.0  # the batch runs; its callers send their next request
        for _ in batch:
            queue.append(Waiting(RequestInfo(int(rng.integers(1, 65))), now))
            arrivals += 1
    assert worst <= limits.max_delay_s + 1.0


# ---------------------------------------------------------------------- with the host
@pytest.mark.timeout(300)
def test_minilm_answers_equal_predict_batch_alone(minilm: Any, minilm_embedding: Any,
                                                  make_host: Any) -> None:
    from benchmarks.bert import make_queries, random_lengths

    lengths = random_lengths(48, 1, 64, seed=3)
    queries = make_queries(lengths, minilm.vocab_size, seed=3)
    expected = [minilm_embedding.predict_batch(*q) for q in queries]
    host = make_host(model_obj=minilm_embedding, batcher=LengthAwareBatcher([0, 0]),
                     max_batch_size=8, max_delay_s=0.05)
    results: list[Any] = [None] * len(queries)
    barrier = threading.Barrier(12, timeout=30)

    def client(start: int) -> None:
        barrier.wait()
        for i in range(start, len(queries), 12):
            results[i] = host.predict(*queries[i], timeout=120)

    threads = [threading.Thread(target=client, args=(s,)) for s in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert not any(t.is_alive() for t in threads)
    for query, got, want in zip(queries, results, expected):
        assert got.shape == want.shape == (1, query[0].shape[1], 384)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    stats = host.stats()
    assert stats.completed == len(queries)
    assert stats.mean_batch_size > 1  # the 12 clients were batched together


def test_bucket_batcher_fills_a_batch_per_bucket(gated: Any, make_host: Any) -> None:
    """While the model is busy, 40 requests gather; each bucket's batch holds up to 32."""

    class Model:
        calls: list[int] = []

        def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
            Model.calls.append(int(x.shape[0]))
            if len(Model.calls) == 1:
                gated.entered.set()
                gated.release.wait(60)
            return x.float()

    host = make_host(model_obj=Model(), batcher=BucketSeqBatcher([0], [16, 32, 64]),
                     max_batch_size=32)
    first = host.submit(torch.ones(1, 3, dtype=torch.long))
    assert gated.entered.wait(30)
    futures = [host.submit(torch.ones(1, 5 if i % 4 else 40, dtype=torch.long))
               for i in range(40)]
    assert host.stats().queue_depth == 40  # submit() returns once its request is queued
    gated.release.set()
    first.result(60)
    for f in futures:
        f.result(60)
    assert sorted(Model.calls[1:]) == [10, 30]  # one batch per bucket, each whole


@settings(max_examples=100, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 64), min_size=1, max_size=120),
    extra_rows=st.data(),
    max_requests=st.integers(1, 40),
    budget=st.one_of(st.none(), st.integers(1, 800)),
    call=st.sampled_from([0.0, 8.0, 64.0, 1000.0]),
)
def test_vectorised_cuts_equal_the_loop(
    lengths: list[int], extra_rows: Any, max_requests: int, budget: int | None, call: float
) -> None:
    from batch_inference.batcher.length_aware_batcher import _cuts, _cuts_vectorised

    lengths = sorted(lengths)
    rows = [0]
    for _ in lengths:
        rows.append(rows[-1] + extra_rows.draw(st.integers(1, 3)))
    assert _cuts(lengths, rows, max_requests, budget, call + 1e-6) == _cuts_vectorised(
        lengths, rows, max_requests, budget, call + 1e-6
    )


def test_a_large_window_is_partitioned_too() -> None:
    rng = np.random.default_rng(5)
    items = waiting_of([int(v) for v in rng.integers(1, 65, 600)])
    selection = LengthAwareBatcher([0]).select(items, BatchLimits(200), 1e9)
    assert 0 in selection.indices
    assert all(i < 256 for i in selection.indices)  # the default window holds at most 256


def test_dtypes_option_refuses_a_wrong_dtype_like_seq_batcher() -> None:
    batcher = LengthAwareBatcher([0, 0], dtypes=[torch.int64, torch.int64])
    ids = torch.ones(1, 5, dtype=torch.int64)
    assert batcher.inspect((ids, ids)).length == 5
    with pytest.raises(InvalidRequestError, match="int32"):
        batcher.inspect((ids, ids.to(torch.int32)))
