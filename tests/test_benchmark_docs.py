"""Tests of the benchmark helpers the docs add: compare.py (comparisons), results.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from batch_inference import ModelHost
from batch_inference.batcher.seq_batcher import SeqBatcher
from batch_inference.benchmark import (
    LoadResult,
    MethodResult,
    comparison_table,
    load_results,
    measure_host,
    median_of_rounds,
    save_results,
    stats_between,
)
from batch_inference.benchmark.compare import TABLE_COLUMNS
from batch_inference.benchmark.results import RESULTS_DIR_VARIABLE
from batch_inference.errors import ConfigurationError
from batch_inference.stats import HostStats


def _load(queries: int, wall_s: float) -> LoadResult:
    return LoadResult(queries, wall_s, np.full(queries, wall_s / queries))


# ---------------------------------------------------------------- stats_between
def test_stats_between_counts_only_the_window() -> None:
    before = HostStats(requests=10, batches=4, batch_sizes={1: 2, 4: 2},
                       real_tokens=100, padded_tokens=120)
    after = HostStats(requests=42, batches=6, batch_sizes={1: 2, 4: 2, 16: 2},
                      real_tokens=400, padded_tokens=600)
    window = stats_between(before, after)
    assert window.requests == 32
    assert window.batches == 2
    assert window.batch_sizes == {16: 2}
    assert window.mean_batch_size == 16.0
    assert window.padding_efficiency == pytest.approx(300 / 480)


def test_stats_between_empty_window() -> None:
    snapshot = HostStats(requests=3, batches=3, batch_sizes={1: 3})
    window = stats_between(snapshot, snapshot)
    assert window.batches == 0
    assert window.batch_sizes == {}
    assert window.mean_batch_size == 0.0
    assert window.padding_efficiency == 1.0


def test_stats_between_rejects_swapped_snapshots() -> None:
    early = HostStats(requests=1, batches=1, batch_sizes={1: 1})
    late = HostStats(requests=5, batches=2, batch_sizes={1: 1, 4: 1})
    with pytest.raises(ConfigurationError, match="swapped"):
        stats_between(late, early)


# ---------------------------------------------------------------- comparison_table
def test_comparison_table_columns_and_speed_up() -> None:
    results = [
        MethodResult("Baseline", _load(100, 10.0), None, 1.0),
        MethodResult("Sequence Batcher", _load(100, 4.0), 32, 25.5),
    ]
    records = comparison_table(results)
    assert [list(r) for r in records] == [list(TABLE_COLUMNS)] * 2
    base, seq = records
    assert base["Max Batch Size Setting"] == "/"
    assert base["Speed-up"] == 1.0
    assert seq["Max Batch Size Setting"] == 32
    assert seq["Queries/s"] == 25.0
    assert seq["Speed-up"] == 2.5
    assert seq["Execution Time"] == 4.0
    assert seq["Avg Batch Size"] == 25.5
    assert seq["Query Count"] == 100


def test_comparison_table_needs_its_baseline() -> None:
    results = [MethodResult("Sequence Batcher", _load(10, 1.0), 4, 4.0)]
    with pytest.raises(ConfigurationError, match="'Baseline'"):
        comparison_table(results)


# ---------------------------------------------------------------- measure_host
class _Recorder:
    """Records each predict_batch call's size and whether it was warm-up (negative input)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bool]] = []

    def predict_batch(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.calls.append((int(x.shape[0]), bool((x < 0).any())))
        return (x * 2)[..., None]


@pytest.mark.timeout(60)
def test_measure_host_counts_the_measured_run_only() -> None:
    model = _Recorder()
    queries = [(torch.arange(1, n + 1)[None], torch.ones(1, n)) for n in (3, 5, 2, 7) * 10]
    warmup = [(-x, mask) for x, mask in queries[:8]]
    with ModelHost(model_obj=model, batcher=SeqBatcher([0, 0], tensor="pt"),
                   max_batch_size=8) as host:
        result = measure_host("Sequence Batcher", host, queries, clients=8, warmup=warmup,
                              keep_outputs=True)
    measured = [size for size, is_warmup in model.calls if not is_warmup]
    assert sum(size for size, is_warmup in model.calls if is_warmup) == len(warmup)
    assert sum(measured) == len(queries)
    assert result.load.queries == len(queries)
    assert result.max_batch_size == 8
    assert result.mean_batch_size == pytest.approx(len(queries) / len(measured))
    assert 0.0 < result.padding_efficiency <= 1.0
    # Every caller got its own answer, trimmed to its own length.
    for (x, _), out in zip(queries, result.load.outputs):
        assert torch.equal(out, (x * 2)[..., None])


# ---------------------------------------------------------------- median_of_rounds
def test_median_of_rounds_interleaves_and_keeps_the_median() -> None:
    order: list[str] = []
    walls = {"a": iter([3.0, 1.0, 2.0]), "b": iter([5.0, 6.0, 4.0, 7.0])}

    def run(name: str):
        def once() -> MethodResult:
            order.append(name)
            return MethodResult(name, _load(10, next(walls[name])), 4, 4.0)
        return once

    results = median_of_rounds([run("a"), run("b")], rounds=3)
    assert order == ["a", "b"] * 3
    assert [(r.method, r.load.wall_s) for r in results] == [("a", 2.0), ("b", 5.0)]


def test_median_of_rounds_even_rounds_take_the_lower_median() -> None:
    walls = iter([4.0, 1.0, 3.0, 2.0])
    results = median_of_rounds([lambda: MethodResult("a", _load(10, next(walls)), 4, 4.0)], 4)
    assert results[0].load.wall_s == 2.0


@pytest.mark.parametrize("rounds", [0, -1, 1.5, True])
def test_median_of_rounds_needs_positive_rounds(rounds) -> None:
    with pytest.raises(ConfigurationError, match="rounds"):
        median_of_rounds([], rounds)


# ---------------------------------------------------------------- results
def test_save_results_without_a_directory_saves_nothing(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv(RESULTS_DIR_VARIABLE, raising=False)
    monkeypatch.chdir(tmp_path)
    assert save_results("bert_embedding", {"rows": []}) is None
    assert list(tmp_path.iterdir()) == []


def test_save_and_load_results_round_trip(monkeypatch, tmp_path) -> None:
    target = tmp_path / "generated"
    monkeypatch.setenv(RESULTS_DIR_VARIABLE, str(target))
    payload = {"mode": "quick", "rows": [{"Method": "Baseline", "Queries/s": 12.5}]}
    path = save_results("bert_embedding", payload)
    assert path == target / "bert_embedding.json"
    assert json.loads(path.read_text()) == payload
    assert load_results(target, "bert_embedding") == payload
    assert load_results(target, "missing") is None
    assert [p.name for p in target.iterdir()] == ["bert_embedding.json"]


@pytest.mark.parametrize("name", ["../escape", "a/b", "", "sp ace"])
def test_results_names_are_plain(monkeypatch, tmp_path, name: str) -> None:
    monkeypatch.setenv(RESULTS_DIR_VARIABLE, str(tmp_path))
    with pytest.raises(ConfigurationError, match="results name"):
        save_results(name, {})
