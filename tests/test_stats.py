"""host.stats(): counters, batch sizes, padding efficiency, percentiles (behaviour, not timing)."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import numpy as np
import pytest
import torch

from batch_inference import HostStats, ModelHost, Percentiles, RequestTimeoutError
from batch_inference.batcher import SeqBatcher


class Doubler:
    def predict_batch(self, x: Any) -> Any:
        return x * 2


class GatedFailsOnNegative:
    """``x + 1``, raising when any input row is negative; the first call waits for ``release``."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            self.release.wait(60)
        if (x < 0).any():
            raise ValueError("negative input")
        return x + 1


def one(value: float) -> torch.Tensor:
    return torch.tensor([[value]])


# ---------------------------------------------------------------------- Percentiles
def test_percentiles_of_known_samples() -> None:
    p = Percentiles.of(float(v) for v in range(1, 101))
    assert p.count == 100
    assert p.max == 100.0
    assert p.p50 == pytest.approx(50.5)
    assert p.p90 == pytest.approx(np.percentile(np.arange(1, 101), 90))
    assert p.p99 == pytest.approx(np.percentile(np.arange(1, 101), 99))
    assert p.p50 <= p.p90 <= p.p99 <= p.max


def test_percentiles_of_nothing_are_zero() -> None:
    assert Percentiles.of([]) == Percentiles(0.0, 0.0, 0.0, 0.0, 0)


def test_mean_batch_size_and_padding_efficiency_properties() -> None:
    stats = HostStats(batch_sizes={1: 2, 4: 1}, real_tokens=30, padded_tokens=40)
    assert stats.mean_batch_size == pytest.approx(2.0)
    assert stats.padding_efficiency == pytest.approx(0.75)
    empty = HostStats()
    assert empty.mean_batch_size == 0.0
    assert empty.padding_efficiency == 1.0


# ---------------------------------------------------------------------- a host's stats
def test_a_new_host_has_empty_stats(make_host: Any) -> None:
    stats = make_host(model_obj=Doubler()).stats()
    assert (stats.requests, stats.completed, stats.batches, stats.queue_depth) == (0, 0, 0, 0)
    assert stats.batch_sizes == {}
    assert stats.queue_wait_s.count == 0
    assert stats.model_time_s.count == 0


@pytest.mark.timeout(60)
def test_counts_batch_sizes_and_percentiles(gated: Any, make_host: Any, wait_until: Any) -> None:
    host = make_host(model_obj=gated, max_batch_size=8)
    first = host.submit(np.ones((1, 2), dtype=np.float32))
    assert gated.entered.wait(30)
    rest = [host.submit(np.full((1, 2), i, dtype=np.float32)) for i in range(5)]
    assert host.stats().queue_depth == 5  # submit() returns once its request is queued
    during = host.stats()
    assert during.requests == 6
    assert during.completed == 0
    gated.release.set()
    for future in [first, *rest]:
        future.result(30)
    wait_until(lambda: host.stats().completed == 6)
    stats = host.stats()
    assert stats.requests == 6
    assert stats.batches == 2
    assert stats.batch_sizes == {1: 1, 5: 1}
    assert stats.mean_batch_size == pytest.approx(3.0)
    assert (stats.failed, stats.timed_out, stats.cancelled, stats.retries) == (0, 0, 0, 0)
    assert stats.queue_depth == 0
    assert stats.queue_wait_s.count == 6  # one queue wait per request
    assert stats.model_time_s.count == 2  # one model time per batch
    for p in (stats.queue_wait_s, stats.model_time_s):
        assert 0.0 <= p.p50 <= p.p90 <= p.p99 <= p.max
    # The five requests that queued behind the gate waited at least as long as the first.
    assert stats.queue_wait_s.max >= stats.queue_wait_s.p50


@pytest.mark.timeout(60)
def test_padding_efficiency_counts_real_and_padded_tokens(
    gated: Any, make_host: Any, wait_until: Any
) -> None:
    host = make_host(model_obj=gated, batcher=SeqBatcher([0]), max_batch_size=8)
    first = host.submit(torch.ones(1, 4, dtype=torch.long))
    assert gated.entered.wait(30)
    rest = [host.submit(torch.ones(1, n, dtype=torch.long)) for n in (2, 4, 6)]
    assert host.stats().queue_depth == 3  # submit() returns once its request is queued
    gated.release.set()
    assert first.result(30).shape == (1, 4)
    assert [f.result(30).shape[1] for f in rest] == [2, 4, 6]
    wait_until(lambda: host.stats().completed == 4)
    stats = host.stats()
    # Batch 1: 4 real of 4 padded. Batch 2: 2 + 4 + 6 = 12 real, 3 x 6 = 18 padded.
    assert stats.real_tokens == 16
    assert stats.padded_tokens == 22
    assert stats.padding_efficiency == pytest.approx(16 / 22)


@pytest.mark.timeout(60)
def test_failures_and_isolation_retries_are_counted(make_host: Any, wait_until: Any) -> None:
    model = GatedFailsOnNegative()
    host = make_host(model_obj=model, max_batch_size=8)
    first = host.submit(one(0.0))
    assert model.entered.wait(30)
    good, bad = host.submit(one(1.0)), host.submit(one(-1.0))
    assert host.stats().queue_depth == 2  # submit() returns once its request is queued
    model.release.set()
    assert first.result(30).item() == 1.0
    assert good.result(30).item() == 2.0
    with pytest.raises(ValueError, match="negative"):
        bad.result(30)
    wait_until(lambda: host.stats().completed + host.stats().failed == 3)
    stats = host.stats()
    assert (stats.completed, stats.failed) == (2, 1)
    # The batch of two failed, then each half ran alone: two retries.
    assert stats.retries == 2
    assert stats.batches == 4
    assert stats.batch_sizes == {1: 3, 2: 1}


@pytest.mark.timeout(60)
def test_cancelled_and_timed_out_requests_are_counted(
    gated: Any, make_host: Any, wait_until: Any
) -> None:
    host = make_host(model_obj=gated, max_batch_size=8)
    first = host.submit(np.ones((1, 2), dtype=np.float32))
    assert gated.entered.wait(30)
    doomed = host.submit(np.ones((1, 2), dtype=np.float32))
    assert doomed.cancel()
    with pytest.raises(RequestTimeoutError):
        host.predict(np.ones((1, 2), dtype=np.float32), timeout=0.05)
    wait_until(lambda: host.stats().cancelled == 1 and host.stats().timed_out == 1)
    gated.release.set()
    first.result(30)
    wait_until(lambda: host.stats().completed == 1)
    stats = host.stats()
    assert (stats.requests, stats.completed, stats.cancelled, stats.timed_out) == (3, 1, 1, 1)
    assert stats.batch_sizes == {1: 1}  # neither the cancelled nor the expired one ran


def test_a_snapshot_does_not_change_afterwards(make_host: Any, wait_until: Any) -> None:
    host: ModelHost = make_host(model_obj=Doubler())
    before = host.stats()
    host.predict(np.ones((1, 2), dtype=np.float32))
    wait_until(lambda: host.stats().completed == 1)
    assert before.requests == 0 and before.completed == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.requests = 5  # type: ignore[misc]
    assert host.stats().requests == 1


def test_model_busy_s_adds_up_every_model_call() -> None:
    from batch_inference.stats import StatsRecorder

    recorder = StatsRecorder()
    recorder.batch(size=2, real=2, padded=2, waits=[0.0, 0.0], model_s=0.25, retry=False)
    recorder.batch(size=1, real=1, padded=1, waits=[], model_s=0.5, retry=True)
    snapshot = recorder.snapshot(requests=2, queue_depth=0)
    assert snapshot.model_busy_s == pytest.approx(0.75)
    assert snapshot.model_time_s.p50 > 0
