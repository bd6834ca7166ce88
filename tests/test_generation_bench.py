"""The GPT completion page's measuring helpers (benchmarks.generation)."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("transformers")

from _generation_support import reference, tiny_gpt2

from batch_inference.errors import ConfigurationError
from benchmarks.generation import (
    METHODS,
    GenerationRun,
    generation_table,
    latency_table,
    load_gpt2,
    make_workload,
    median_run,
    run_closed_loop,
    run_poisson,
    step_cost_curve,
)


@pytest.fixture(scope="module")
def model() -> Any:
    return tiny_gpt2()


def test_make_workload_is_reproducible_and_in_range() -> None:
    workload = make_workload(50, (2, 5), (3, 9), vocab_size=11, seed=3)
    assert workload == make_workload(50, (2, 5), (3, 9), vocab_size=11, seed=3)
    assert workload != make_workload(50, (2, 5), (3, 9), vocab_size=11, seed=4)
    lengths = {len(prompt) for prompt, _ in workload}
    budgets = {budget for _, budget in workload}
    assert lengths <= set(range(2, 6)) and len(lengths) > 1
    assert budgets <= set(range(3, 10)) and len(budgets) > 1
    assert all(0 <= t < 11 for prompt, _ in workload for t in prompt)


@pytest.mark.parametrize("method", list(METHODS))
def test_closed_loop_serves_every_query_exactly(model: Any, method: str) -> None:
    workload = make_workload(12, (1, 9), (2, 12), vocab_size=97, seed=5)
    run = run_closed_loop(model, method, workload, clients=4, max_batch_size=4, timeout_s=60)
    assert run.outputs == [reference(model, p, n) for p, n in workload]
    assert run.queries == 12 and run.generated_tokens == sum(n for _, n in workload)
    assert len(run.ttft_s) == len(run.latency_s) == 12
    assert all(0 < t <= lat for t, lat in zip(run.ttft_s, run.latency_s))
    assert run.max_batch_size == (1 if method == "Baseline" else run.max_batch_size) <= 4
    assert run.model_calls >= run.generated_tokens / 4 and run.tokens_per_s > 0


def test_poisson_run_serves_every_query_exactly(model: Any) -> None:
    workload = make_workload(8, (1, 6), (2, 8), vocab_size=97, seed=6)
    run = run_poisson(model, "Continuous batching", workload, rate_per_s=500.0,
                      max_batch_size=8, seed=1, timeout_s=60)
    assert run.outputs == [reference(model, p, n) for p, n in workload]
    assert run.wall_s > 0 and len(run.ttft_s) == 8
    with pytest.raises(ConfigurationError, match="-1"):
        run_poisson(model, "Continuous batching", workload, rate_per_s=-1, max_batch_size=8)
    with pytest.raises(ConfigurationError, match="'Dynamic'"):
        run_closed_loop(model, "Dynamic", workload, clients=1, max_batch_size=8)


def test_step_cost_curve_has_a_positive_time_per_size(model: Any) -> None:
    curve = step_cost_curve(model, [1, 3], context=4, steps=3)
    assert list(curve) == [1, 3] and all(s > 0 for s in curve.values())


def _run(method: str, wall_s: float, tokens: int) -> GenerationRun:
    return GenerationRun(method, 4, wall_s, tokens, 2, 1.5, 7, [0.1, 0.2, 0.3, 0.4],
                         [1.0, 2.0, 3.0, 4.0])


def test_tables_hold_1_0s_columns_and_ratios() -> None:
    runs = [_run("Baseline", 2.0, 100), _run("Continuous batching", 0.5, 100)]
    rows = generation_table(runs)
    assert list(rows[0])[:8] == [
        "Method", "Query Count", "Execution Time", "Throughput comparing to Baseline",
        "Max Batch Size", "Avg Batch Size", "Generated Token Count", "Inference Count",
    ]
    assert rows[1]["Throughput comparing to Baseline"] == "4.00x"
    assert rows[1]["Tokens/s"] == 200.0 and rows[0]["Execution Time"] == "2.00 s"
    with pytest.raises(ConfigurationError, match="'Nobody'"):
        generation_table(runs, baseline="Nobody")
    latency = latency_table(runs)[0]
    assert latency["TTFT p50 (ms)"] == 250.0 and latency["Latency p50 (ms)"] == 2500.0


def test_load_gpt2_quick_is_random_and_says_so() -> None:
    loaded = load_gpt2("quick", seed=0)
    assert "random-initialised with seed 0" in loaded.weights
    assert loaded.vocab_size == loaded.model.config.vocab_size and loaded.max_positions > 64
    with pytest.raises(ConfigurationError, match="'fast'"):
        load_gpt2("fast")


def test_median_run_is_the_middle_round_of_one_method() -> None:
    rounds = [_run("Baseline", wall_s, 100) for wall_s in (1.0, 4.0, 2.0)]
    assert median_run(rounds) is rounds[2]
    assert median_run(rounds[:2]) is rounds[1]  # the lower middle: the slower of two
    with pytest.raises(ConfigurationError, match="'Static batching'"):
        median_run([rounds[0], _run("Static batching", 1.0, 100)])
    with pytest.raises(ConfigurationError):
        median_run([])


def test_closed_loop_passes_sampling_keywords_to_every_request(model: Any) -> None:
    workload = make_workload(8, (1, 6), (2, 8), vocab_size=97, seed=7)
    greedy = [reference(model, p, n) for p, n in workload]
    sampled = [run_closed_loop(model, "Continuous batching", workload, clients=4,
                               max_batch_size=4, timeout_s=60,
                               sampling={"temperature": 5.0, "top_p": 1.0, "seed": seed})
               for seed in (1, 1, 2)]
    assert [len(o) for o in sampled[0].outputs] == [n for _, n in workload]
    assert sampled[0].outputs == sampled[1].outputs  # seeded: the same tokens in any batch
    assert sampled[0].outputs != greedy and sampled[0].outputs != sampled[2].outputs
