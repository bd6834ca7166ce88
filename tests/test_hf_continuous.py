"""The GPT page's runner of transformers' own continuous batching (benchmarks.hf_continuous)."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("transformers")

from _generation_support import reference, tiny_gpt2  # noqa: E402

from batch_inference.errors import ConfigurationError  # noqa: E402
from benchmarks.generation import make_workload  # noqa: E402
from benchmarks.hf_continuous import (  # noqa: E402
    HF_METHOD,
    HFContinuousBatching,
    run_hf_closed_loop,
)


@pytest.fixture(scope="module")
def model() -> Any:
    model = tiny_gpt2()
    model.config.eos_token_id = None  # as the page's model: every query runs to its budget
    return model


@pytest.mark.timeout(300)
def test_the_closed_loop_gives_each_query_greedy_decoding_alone(model: Any) -> None:
    workload = make_workload(10, (1, 9), (2, 12), vocab_size=97, seed=5)
    run = run_hf_closed_loop(model, workload, clients=4, max_batch_size=4, timeout_s=120)
    assert run.method == HF_METHOD and run.queries == 10
    assert run.outputs == [reference(model, p, n) for p, n in workload]
    assert run.generated_tokens == sum(n for _, n in workload)
    assert all(0 < t <= lat for t, lat in zip(run.ttft_s, run.latency_s, strict=True))
    # Every forward pass hands out at least one token and at most one per request.
    assert 0 < run.model_calls <= run.generated_tokens
    assert 1 <= run.mean_batch_size <= 4 and run.tokens_per_s > 0


@pytest.mark.parametrize("bad, named", [({"max_batch_size": 0}, "max_batch_size"),
                                        ({"max_length": -3}, "-3"),
                                        ({"max_prompt_length": 1.5}, "1.5")])
def test_the_manager_refuses_bad_sizes(model: Any, bad: dict, named: str) -> None:
    sizes = {"max_batch_size": 2, "max_length": 16, "max_prompt_length": 8, **bad}
    with pytest.raises(ConfigurationError, match=named):
        HFContinuousBatching(model, **sizes)


def test_the_cache_holds_every_running_request(model: Any) -> None:
    hf = HFContinuousBatching(model, max_batch_size=4, max_length=300, max_prompt_length=20)
    assert hf.num_blocks * hf.page_size >= 4 * 300 and hf.max_batch_tokens >= 4 * 20
