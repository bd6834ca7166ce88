"""Correctness of batched generation: each caller gets greedy decoding of its prompt alone."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("transformers")

from _generation_support import GatedModel, prompts, reference, tiny_gpt2

from batch_inference.generation import GenerationHost
from batch_inference.generation.hf import CausalLMBatch, HFCausalLM
from batch_inference.generation.protocol import greedy_tokens

WAIT_S = 30


@pytest.fixture(scope="module")
def model() -> Any:
    return tiny_gpt2()


@pytest.fixture
def hosts() -> Any:
    made: list[GenerationHost] = []

    def make(*args: Any, **kwargs: Any) -> GenerationHost:
        host = GenerationHost(*args, **kwargs)
        made.append(host)
        return host.start()

    yield make
    for host in made:
        host.stop(cancel_pending=True, timeout=10)


def test_reference_completions_vary(model: Any) -> None:
    # The check below would be weak if the random model repeated one token.
    tokens = reference(model, prompts([5])[0], 20)
    assert len(set(tokens)) > 3


@pytest.mark.parametrize("policy", ["continuous", "static"])
def test_prompts_of_different_lengths_batched_match_alone(
    model: Any, hosts: Any, policy: str
) -> None:
    gated = GatedModel(HFCausalLM(model), gate_at=0)
    host = hosts(gated, max_batch_size=8, policy=policy)
    first = host.stream(prompts([4])[0], 12)
    assert gated.entered.wait(WAIT_S)
    # While the first step blocks, these queue up; they join together at the next boundary.
    texts = prompts([1, 7, 13, 2, 30], seed=2)
    budgets = [12, 5, 20, 1, 9]
    streams = [host.stream(p, n) for p, n in zip(texts, budgets)]
    gated.release.set()
    assert first.result(WAIT_S) == reference(model, first.prompt, 12)
    for stream, text, budget in zip(streams, texts, budgets):
        assert stream.result(WAIT_S) == reference(model, text, budget)
    if policy == "continuous":
        assert max(gated.step_rows) == 1 + len([b for b in budgets if b > 1])
    else:  # the second batch started only once the first one was done
        assert gated.step_rows[:11] == [1] * 11


def test_requests_joining_mid_decode_match_alone(model: Any, hosts: Any) -> None:
    gated = GatedModel(HFCausalLM(model), gate_at=6)
    host = hosts(gated, max_batch_size=4)
    early = [host.stream(p, 30) for p in prompts([3, 11], seed=3)]
    assert gated.entered.wait(WAIT_S)  # the early ones are 7 tokens in
    late = [host.stream(p, 25) for p in prompts([17, 1, 6], seed=4)]
    gated.release.set()
    for stream in early + late:
        assert stream.result(WAIT_S) == reference(model, stream.prompt, stream.max_new_tokens)
    calls = gated.calls
    gate = [i for i, call in enumerate(calls) if call[0] == "step"][6]
    # Right after the gated step, two late ones join (max_batch_size=4 leaves two rows free)...
    assert calls[gate + 1] == ("prefill", 2) and calls[gate + 2] == ("step", 4)
    # ... and the third joins as soon as a row is free.
    assert calls.count(("prefill", 1)) >= 1 and max(gated.step_rows) == 4


def test_eos_part_way_ends_each_row_alone(model: Any, hosts: Any) -> None:
    texts = prompts([2, 9, 5, 14], seed=5)
    lone = reference(model, texts[0], 20)
    eos = lone[4]  # a token the first completion reaches part-way
    host = hosts(model, max_batch_size=4, eos_token_id=eos)
    streams = [host.stream(p, 20) for p in texts]
    for stream, text in zip(streams, texts):
        expected = reference(model, text, 20, eos_token_id=eos)
        assert stream.result(WAIT_S) == expected
    assert streams[0].result(0)[-1] == eos and len(streams[0].result(0)) <= 5


def test_filter_and_concatenate_keep_rows_exact(model: Any) -> None:
    lm = HFCausalLM(model)
    texts = prompts([3, 8, 1], seed=6)
    expected = [reference(model, p, 8) for p in texts]
    batch, logits = lm.prefill(texts[:2])
    got = [[t] for t in greedy_tokens(logits)]
    batch, logits = lm.step(batch, [g[-1] for g in got])
    for g, t in zip(got, greedy_tokens(logits)):
        g.append(t)
    late, late_logits = lm.prefill(texts[2:])
    got.append(greedy_tokens(late_logits))
    batch = CausalLMBatch.concatenate([batch, late])
    assert len(batch) == 3 and batch.width == max(b for b in batch.lengths)
    rows = [0, 1, 2]
    while len(got[0]) < 8:
        if len(got[0]) == 5:  # drop the longest row: the padding only it needed goes too
            batch, rows = batch.filter([0, 2]), [0, 2]
            assert batch.width == max(batch.lengths) < len(texts[1]) + 5
        batch, logits = lm.step(batch, [got[r][-1] for r in rows])
        for r, t in zip(rows, greedy_tokens(logits)):
            got[r].append(t)
    assert got[0] == expected[0]
    assert got[1] == expected[1][:5]
    assert got[2] == expected[2][:len(got[2])] and len(got[2]) == 7


def test_joins_wait_for_min_join_rows_free_or_max_join_delay_steps(
    model: Any, hosts: Any
) -> None:
    gated = GatedModel(HFCausalLM(model), gate_at=0, more_gates=[2])
    host = hosts(gated, max_batch_size=8, min_join_rows=4, max_join_delay_steps=3)
    first = host.stream([1, 2], 40)
    assert gated.entered.wait(WAIT_S)
    six = [host.stream(p, 40) for p in prompts([3, 4, 5, 6, 7, 8], seed=13)]
    gated.release.set()  # 7 rows free >= 4: the six join at once
    entered, release = gated.gates[2]
    assert entered.wait(WAIT_S)
    late = host.stream([9, 10, 11], 20)
    release.set()  # 1 row free < 4: the late one waits 3 steps, then joins
    for stream in [first, *six, late]:
        assert stream.result(WAIT_S) == reference(model, stream.prompt, stream.max_new_tokens)
    gate = [i for i, call in enumerate(gated.calls) if call[0] == "step"][2]
    assert gated.calls[1:4] == [("step", 1), ("prefill", 6), ("step", 7)]
    assert gated.calls[gate:gate + 6] == [("step", 7)] * 4 + [("prefill", 1), ("step", 8)]
    assert GenerationHost(model, max_batch_size=32).min_join_rows == 4
