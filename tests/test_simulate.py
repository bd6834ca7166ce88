"""The closed-loop simulation and the cost-model fit of ``batch_inference.benchmark.simulate``."""

from __future__ import annotations

import math

import pytest
import torch

from batch_inference import ConfigurationError
from batch_inference.batcher import BucketSeqBatcher, LengthAwareBatcher, SeqBatcher
from batch_inference.batcher.base import Batcher, BatchLimits, RequestInfo, Selection, Waiting
from batch_inference.benchmark import simulate
from batch_inference.benchmark.simulate import (
    CostModel,
    fit_cost_model,
    simulate_closed_loop,
    simulate_offline,
)
from benchmarks.bert import random_lengths

pytestmark = pytest.mark.timeout(60)


def two_args(length: int) -> tuple[torch.Tensor, torch.Tensor]:
    row = torch.zeros(1, length, dtype=torch.long)
    return row, row


LENGTHS = random_lengths(400, 1, 64, seed=0)


def test_cost_model_seconds_and_call_cost_in_tokens() -> None:
    cost = CostModel(call_s=0.004, token_s=0.0001, attention_s=0.000001)
    assert cost.seconds(2, 10) == pytest.approx(0.004 + 0.0001 * 20 + 0.000001 * 200)
    assert cost.call_cost_tokens == pytest.approx(40.0)
    assert CostModel(1.0, 0.0).call_cost_tokens == math.inf


def test_fit_recovers_the_coefficients_of_a_model_on_a_fake_clock(monkeypatch) -> None:
    truth = CostModel(call_s=0.003, token_s=5e-5, attention_s=4e-7)
    clock = [0.0]
    monkeypatch.setattr(simulate.time, "perf_counter", lambda: clock[0])

    def predict_batch(rows: int, length: int) -> None:
        clock[0] += truth.seconds(rows, length)

    fitted = fit_cost_model(predict_batch, lambda r, n: (r, n), repeats=2)
    assert fitted.call_s == pytest.approx(truth.call_s, rel=1e-6)
    assert fitted.token_s == pytest.approx(truth.token_s, rel=1e-6)
    assert fitted.attention_s == pytest.approx(truth.attention_s, rel=1e-6)


def test_fit_keeps_every_coefficient_non_negative(monkeypatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(simulate.time, "perf_counter", lambda: clock[0])

    def shrinking(rows: int, length: int) -> None:  # bigger batches "faster": a bad clock
        clock[0] += 1.0 / (rows * length)

    fitted = fit_cost_model(shrinking, lambda r, n: (r, n), repeats=1)
    assert min(fitted.call_s, fitted.token_s, fitted.attention_s) >= 0.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"repeats": 0}, "repeats"), ({"rows": (1,), "lengths": (8,)}, "3 grid points"),
     ({"rows": (0, 1, 2), "lengths": (8,)}, "positive")],
)
def test_fit_refuses_bad_settings(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        fit_cost_model(lambda *a: None, lambda r, n: (r, n), **kwargs)


def test_one_client_runs_every_query_alone() -> None:
    cost = CostModel(call_s=0.01, token_s=0.001)
    lengths = [3, 9, 4]
    run = simulate_closed_loop(SeqBatcher([0, 0]), lengths, 1, cost, two_args)
    assert run.calls == 3
    assert run.seconds == pytest.approx(sum(cost.seconds(1, n) for n in lengths))
    assert run.padding_efficiency == 1.0
    assert run.qps == pytest.approx(3 / run.seconds)


def test_closed_loop_serves_every_query_once_in_full_batches_of_equal_lengths() -> None:
    cost = CostModel(call_s=0.01, token_s=0.0)
    run = simulate_closed_loop(SeqBatcher([0, 0]), [7] * 100, 64, cost, two_args)
    # 64 wait, 32 go; the other 32 go next while the first 32 come back; and so on.
    assert run.calls == math.ceil(100 / 32)
    assert run.seconds == pytest.approx(run.calls * 0.01)
    assert run.padding_efficiency == 1.0


def test_length_aware_pads_less_than_bucket_and_seq_in_simulation() -> None:
    cost = CostModel(call_s=0.0042, token_s=6.6e-5, attention_s=3.8e-7)
    runs = {
        name: simulate_closed_loop(batcher, LENGTHS, 64, cost, two_args)
        for name, batcher in [("seq", SeqBatcher([0, 0])),
                              ("bucket", BucketSeqBatcher([0, 0], [16, 32, 64])),
                              ("aware", LengthAwareBatcher([0, 0]))]
    }
    assert (runs["seq"].padding_efficiency < runs["bucket"].padding_efficiency
            < runs["aware"].padding_efficiency)
    assert runs["seq"].qps < runs["bucket"].qps < runs["aware"].qps
    ceiling = simulate_offline(LENGTHS, 32, cost)
    assert all(run.qps < ceiling.qps for run in runs.values())


def test_a_waiting_policy_advances_the_clock_to_its_wake_time() -> None:
    cost = CostModel(call_s=0.01, token_s=0.0)
    run = simulate_closed_loop(SeqBatcher([0, 0]), [5, 5, 5], 3, cost, two_args,
                               max_batch_size=8, max_delay_s=0.5)
    # Never full (3 < 8): the batch waits out max_delay_s, then all three go together.
    assert run.calls == 1
    assert run.seconds == pytest.approx(0.5 + 0.01)


class Stuck(Batcher):
    def inspect(self, args: tuple) -> RequestInfo:
        return RequestInfo()

    def select(self, waiting: list[Waiting], limits: BatchLimits, now_s: float) -> Selection:
        return Selection()

    def batch(self, requests: list) -> tuple:
        raise AssertionError("not reached")

    def unbatch(self, outputs: object, context: object) -> list:
        raise AssertionError("not reached")


def test_a_policy_that_never_chooses_is_an_error_not_a_hang() -> None:
    with pytest.raises(ConfigurationError, match="Stuck.select chose nothing from 2"):
        simulate_closed_loop(Stuck(), [1, 2], 2, CostModel(0.01, 0.0), two_args)


def test_closed_loop_refuses_no_clients() -> None:
    with pytest.raises(ConfigurationError, match="clients must be >= 1, got 0"):
        simulate_closed_loop(SeqBatcher([0, 0]), [1], 0, CostModel(0.01, 0.0), two_args)


def test_offline_ceiling_sorts_and_chunks() -> None:
    cost = CostModel(call_s=1.0, token_s=0.0)
    run = simulate_offline([5, 1, 3, 2], 2, cost)
    assert run.calls == 2 and run.seconds == 2.0
    assert run.padding_efficiency == pytest.approx((1 + 2 + 3 + 5) / (2 * 2 + 2 * 5))
    with pytest.raises(ConfigurationError, match="batch_size must be >= 1, got 0"):
        simulate_offline([1], 0, cost)


def test_random_batch_stacks_queries_of_one_length() -> None:
    from benchmarks.bert import make_queries, random_batch

    ids, mask = random_batch(3, 7, vocab_size=2000)
    assert ids.shape == mask.shape == (3, 7) and bool(mask.all())
    assert torch.equal(ids, torch.cat([q[0] for q in make_queries([7] * 3, 2000)]))


def test_simulate_policies_runs_every_policy_at_every_concurrency() -> None:
    from benchmarks.scheduling import Policy, simulate_policies

    cost = CostModel(call_s=0.004, token_s=6.6e-5)
    policies = [Policy("seq", SeqBatcher([0, 0])),
                Policy("aware", LengthAwareBatcher([0, 0]), max_delay_s=1.0)]
    ceiling, runs = simulate_policies(policies, LENGTHS, [4, 64], cost, two_args)
    assert ceiling.qps == simulate_offline(LENGTHS, 32, cost).qps
    assert set(runs) == {("seq", 4), ("aware", 4), ("seq", 64), ("aware", 64)}
    expected = simulate_closed_loop(LengthAwareBatcher([0, 0]), LENGTHS, 64, cost, two_args,
                                    32, 1.0)
    assert runs["aware", 64].qps == expected.qps
