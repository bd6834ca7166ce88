"""The measuring helpers behind the scheduling and overhead pages (fast, with tiny models)."""

from __future__ import annotations

import statistics
from typing import Any

import pytest
import torch

from batch_inference import ConfigurationError
from batch_inference.batcher import LengthAwareBatcher, SeqBatcher
from benchmarks._accelerator_harness import NoOpModel
from benchmarks.overhead import (
    async_requests_per_s,
    handoff_floor_requests_per_s,
    lone_caller_latency,
    thread_requests_per_s,
)
from benchmarks.scheduling import (
    Policy,
    compare_policies,
    length_sorted_batches,
    run_policy,
    standard_policies,
)


class TokenSum:
    """``predict_batch(ids, mask) -> (ids * mask)[..., None].float()``: shape (n, L, 1)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def predict_batch(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(ids.shape))
        return (ids * mask)[..., None].float()


def queries_of(lengths: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.arange(1, n + 1)[None], torch.ones(1, n, dtype=torch.long)) for n in lengths]


def test_length_sorted_batches_sort_pad_and_stack() -> None:
    batches = length_sorted_batches(queries_of([5, 2, 7, 3, 1]), 2, (0, 0))
    assert [tuple(b[0].shape) for b in batches] == [(2, 2), (2, 5), (1, 7)]
    ids, mask = batches[1]
    assert ids.tolist() == [[1, 2, 3, 0, 0], [1, 2, 3, 4, 5]]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    with pytest.raises(ConfigurationError, match="batch_size"):
        length_sorted_batches(queries_of([1]), 0, (0, 0))


@pytest.mark.timeout(60)
def test_run_policy_reports_the_measured_run_only() -> None:
    model = TokenSum()
    queries = queries_of([4, 4, 8, 8] * 10)
    result = run_policy(model, Policy("seq", SeqBatcher([0, 0]), 8), queries, clients=4,
                        warmup=8)
    assert (result.policy, result.clients, result.queries) == ("seq", 4, 40)
    assert result.qps > 0 and result.wall_s > 0
    assert 0 < result.p50_ms <= result.p99_ms
    assert 1 <= result.mean_batch_size <= 4  # 4 clients: at most 4 requests wait together
    assert 0.5 <= result.padding_efficiency <= 1.0


@pytest.mark.timeout(60)
def test_compare_policies_measures_the_ceiling_and_every_pair() -> None:
    model = TokenSum()
    queries = queries_of([3, 9, 27, 5] * 8)
    policies = [Policy("seq", SeqBatcher([0, 0]), 8),
                Policy("aware", LengthAwareBatcher([0, 0]), 8)]
    results, ceilings = compare_policies(model, policies, queries, [2, 8], ceiling_batch_size=8,
                                         repeats=2)
    assert len(ceilings) == 2 * 4 and all(c > 0 for c in ceilings)  # one per policy run
    assert sorted((r.clients, r.policy) for r in results) == [
        (2, "aware"), (2, "seq"), (8, "aware"), (8, "seq")]
    for r in results:
        assert r.ceiling_qps == pytest.approx(statistics.median(ceilings))
        # The median of two ratios to adjacent ceilings: between the lowest and highest ratio.
        assert 100 * r.qps / max(ceilings) / 4 < r.pct_of_ceiling < 400 * r.qps / min(ceilings)
    with pytest.raises(ConfigurationError, match="repeats"):
        compare_policies(model, policies, queries, [2], repeats=0)


@pytest.mark.timeout(60)
def test_overhead_figures_are_measured() -> None:
    assert NoOpModel().predict_batch(7) == 7
    assert thread_requests_per_s(threads=4, requests=400) > 0
    assert async_requests_per_s(tasks=8, requests=400) > 0
    lone = lone_caller_latency(calls=50)
    assert lone.direct_s > 0 and lone.hosted_s > 0
    assert lone.added_s == lone.hosted_s - lone.direct_s
    assert lone.added_s > -0.01  # a host call is not faster than a direct one by more than noise
    with pytest.raises(ConfigurationError, match="got 0"):
        lone_caller_latency(calls=0)


@pytest.mark.timeout(60)
def test_handoff_floor_serves_every_call_and_stops_its_server() -> None:
    import threading

    before = {t.name for t in threading.enumerate()}
    rate = handoff_floor_requests_per_s(threads=4, requests=400)
    assert 0 < rate < float("inf")
    # The server thread was told to stop and joined: nothing is left behind.
    assert "handoff-floor-server" not in {t.name for t in threading.enumerate()} - before


def test_policy_result_record_is_plain(tmp_path: Any) -> None:
    import json

    model = TokenSum()
    result = run_policy(model, Policy("seq", SeqBatcher([0, 0]), 4), queries_of([2] * 8), 2,
                        warmup=0)
    text = json.dumps(result.record())
    assert json.loads(text)["policy"] == "seq"


def test_standard_policies_names_batchers_and_delay() -> None:
    plain = standard_policies(16, call_cost_tokens=128)
    assert [p.name for p in plain] == ["SeqBatcher", "BucketSeqBatcher", "LengthAwareBatcher"]
    assert all(p.max_batch_size == 16 and p.max_delay_s == 0.0 for p in plain)
    assert isinstance(plain[0].batcher, SeqBatcher)
    assert plain[1].batcher.buckets == [16, 32, 64]
    assert plain[2].batcher.call_cost_tokens == 128
    delayed = standard_policies(delay_s=0.25)
    assert delayed[-1].name == "LengthAwareBatcher, max_delay_s=0.25"
    assert delayed[-1].max_delay_s == 0.25
    assert isinstance(delayed[-1].batcher, LengthAwareBatcher)
