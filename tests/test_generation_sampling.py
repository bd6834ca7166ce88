"""Sampling per request: seeded tokens independent of the batch, greedy exact, bad values."""

from __future__ import annotations

import asyncio
import collections
import math
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from _generation_support import ARCHITECTURES, GatedModel, prompts, reference, tiny_gpt2

from batch_inference.errors import InvalidRequestError
from batch_inference.generation import GenerationHost
from batch_inference.generation._sampling import RowSampler, next_tokens
from batch_inference.generation.hf import HFCausalLM

WAIT_S = 30

#: (temperature, top_k, top_p, seed) of the sampled requests; None: greedy.
SETTINGS = [
    (0.8, None, 1.0, 1),
    (1.3, 5, 1.0, 2),
    (0.7, None, 0.9, 3),
    None,
    (1.0, 20, 0.8, 4),
    (2.0, None, 1.0, 5),
]
BUDGETS = [16, 9, 20, 12, 14, 18]


def _options(setting: tuple[float, int | None, float, int] | None) -> dict[str, Any]:
    if setting is None:
        return {}
    temperature, top_k, top_p, seed = setting
    return {"temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed}


@pytest.fixture
def hosts() -> Any:
    made: list[tuple[GenerationHost, Any]] = []

    def make(model: Any, **kwargs: Any) -> GenerationHost:
        host = GenerationHost(model, **kwargs)
        made.append((host, model))
        return host.start()

    yield make
    for host, model in made:
        if isinstance(model, GatedModel):
            model.open_all()
        host.stop(cancel_pending=True, timeout=10)


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_seeded_requests_get_the_same_tokens_alone_and_batched(
    hosts: Any, architecture: str
) -> None:
    model = ARCHITECTURES[architecture]()
    texts = prompts([3, 11, 6, 1, 17, 8], seed=21)
    alone_host = hosts(model, max_batch_size=1)
    alone = [alone_host.generate(t, n, timeout=WAIT_S, **_options(s))
             for t, n, s in zip(texts, BUDGETS, SETTINGS)]
    # Batched: the first two start together, the next three join at step 2, the last at step 5.
    gated = GatedModel(HFCausalLM(model), gate_at=None, more_gates=(0, 2, 5))
    host = hosts(gated, max_batch_size=8)
    streams = [host.stream(texts[0], BUDGETS[0], **_options(SETTINGS[0]))]
    for index, group in ((0, [1]), (2, [2, 3, 4]), (5, [5])):
        entered, release = gated.gates[index]
        assert entered.wait(WAIT_S)
        streams += [host.stream(texts[i], BUDGETS[i], **_options(SETTINGS[i])) for i in group]
        release.set()
    batched = [s.result(WAIT_S) for s in streams]
    assert batched == alone
    assert max(gated.step_rows) >= 4  # they did share steps
    greedy = SETTINGS.index(None)
    assert alone[greedy] == reference(model, texts[greedy], BUDGETS[greedy])
    # Sampling did something: the sampled completions are not the greedy ones.
    sampled = [i for i, s in enumerate(SETTINGS) if s is not None]
    assert sum(alone[i] != reference(model, texts[i], BUDGETS[i]) for i in sampled) >= 4


def test_seed_repeats_and_other_seeds_differ(hosts: Any) -> None:
    model = tiny_gpt2()
    host = hosts(model, max_batch_size=4)
    prompt = prompts([5], seed=22)[0]
    runs = {seed: [host.generate(prompt, 24, temperature=1.0, seed=seed, timeout=WAIT_S)
                   for _ in range(2)] for seed in range(4)}
    for first, second in runs.values():
        assert first == second
    assert len({tuple(first) for first, _ in runs.values()}) == 4
    # Without a seed each request draws a fresh one: two such runs differ.
    free = [host.generate(prompt, 24, temperature=1.0, timeout=WAIT_S) for _ in range(2)]
    assert free[0] != free[1]


@pytest.mark.parametrize("options", [{"temperature": 0.0, "seed": 3, "top_p": 0.5},
                                     {"temperature": 1.5, "top_k": 1, "seed": 4}])
def test_temperature_zero_and_top_k_one_are_greedy(hosts: Any, options: dict[str, Any]) -> None:
    model = tiny_gpt2()
    host = hosts(model, max_batch_size=4)
    for text in prompts([2, 9], seed=23):
        assert host.generate(text, 15, timeout=WAIT_S, **options) == reference(model, text, 15)


def test_stop_token_ids_end_a_completion_at_the_first_one(hosts: Any) -> None:
    model = tiny_gpt2()
    host = hosts(model, max_batch_size=4, eos_token_id=96)
    text = prompts([6], seed=24)[0]
    full = reference(model, text, 30)
    assert 96 not in full
    stops = [full[9], full[4]]
    first = min(full.index(t) for t in stops)
    assert host.generate(text, 30, stop_token_ids=stops, timeout=WAIT_S) == full[: first + 1]
    assert host.generate(text, 30, stop_token_ids={full[0]}, timeout=WAIT_S) == full[:1]
    assert host.generate(text, 30, stop_token_ids=[], timeout=WAIT_S) == full


def _logits(rows: int = 1) -> torch.Tensor:
    """Log-probabilities of 0.4, 0.3, 0.2, 0.05, 0.05 over 5 tokens, in a shuffled order."""
    probs = torch.tensor([0.05, 0.3, 0.05, 0.4, 0.2], dtype=torch.float64)
    return probs.log().repeat(rows, 1)


def _frequencies(temperature: float, top_k: int | None, top_p: float,
                 draws: int = 4000) -> dict[int, float]:
    # One row per draw, each with its own generator: one call draws them all.
    samplers = [RowSampler(temperature, top_k, top_p, seed=seed) for seed in range(draws)]
    counts = collections.Counter(next_tokens(_logits(draws), samplers))
    return {token: count / draws for token, count in sorted(counts.items())}


def test_top_k_and_top_p_keep_the_most_likely_tokens_in_proportion() -> None:
    plain = _frequencies(1.0, None, 1.0)
    expected = {0: 0.05, 1: 0.3, 2: 0.05, 3: 0.4, 4: 0.2}
    assert all(abs(plain[t] - p) < 0.03 for t, p in expected.items())
    top2 = _frequencies(1.0, 2, 1.0)
    assert set(top2) == {1, 3} and abs(top2[3] - 0.4 / 0.7) < 0.03
    nucleus = _frequencies(1.0, None, 0.8)  # 0.4 + 0.3 < 0.8 <= 0.4 + 0.3 + 0.2
    assert set(nucleus) == {1, 3, 4} and abs(nucleus[4] - 0.2 / 0.9) < 0.03
    smallest = _frequencies(1.0, None, 0.3)  # the most likely token alone reaches 0.3
    assert set(smallest) == {3}
    both = _frequencies(1.0, 3, 0.5)  # top 3 renormalised: 0.44, 0.33, 0.22 -> two kept
    assert set(both) == {1, 3}
    cold = _frequencies(0.25, None, 1.0)  # p ** 4, renormalised
    assert abs(cold[3] - 0.4**4 / sum(p**4 for p in expected.values())) < 0.03


def test_rows_draw_from_their_own_generators() -> None:
    logits = torch.randn(5, 50, dtype=torch.float64)
    settings = [(1.0, None, 1.0), (0.7, 10, 1.0), (1.2, None, 0.6), (0.9, 3, 0.9)]

    def run(rows: list[int]) -> dict[int, list[int]]:
        samplers = {i: RowSampler(*settings[i % 4], seed=100 + i) for i in rows}
        drawn: dict[int, list[int]] = {i: [] for i in rows}
        for _ in range(30):
            tokens = next_tokens(logits[rows], [samplers[i] for i in rows])
            for i, token in zip(rows, tokens):
                drawn[i].append(token)
        return drawn

    together = run([0, 1, 2, 3, 4])
    for row in range(5):
        assert run([row])[row] == together[row]
    assert run([4, 2])[2] == together[2]  # another order, other neighbours
    # NumPy logits work the same (the protocol allows them).
    array = next_tokens(logits.numpy()[:2], [None, RowSampler(0.7, 10, 1.0, seed=101)])
    assert array == [int(logits[0].argmax()), together[1][0]]


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"temperature": -0.5}, "-0.5"),
        ({"temperature": math.inf}, "inf"),
        ({"temperature": math.nan}, "nan"),
        ({"temperature": "hot"}, "'hot'"),
        ({"temperature": True}, "True"),
        ({"top_p": 0}, "top_p must be in \\(0, 1\\], got 0"),
        ({"top_p": 1.5}, "1.5"),
        ({"top_p": math.nan}, "nan"),
        ({"top_k": 0}, "top_k .* got 0"),
        ({"top_k": 2.5}, "2.5"),
        ({"top_k": True}, "True"),
        ({"seed": "7"}, "'7'"),
        ({"seed": 1.0}, "1.0"),
        ({"seed": -1}, "-1"),
        ({"seed": 2**64}, str(2**64)),
        ({"stop_token_ids": 5}, "got 5"),
        ({"stop_token_ids": "ab"}, "'ab'"),
        ({"stop_token_ids": [1, 97]}, "97"),
        ({"stop_token_ids": [-1]}, "-1"),
        ({"stop_token_ids": [1.0]}, "1.0"),
    ],
)
def test_bad_sampling_values_are_refused_before_queueing(
    hosts: Any, options: dict[str, Any], named: str
) -> None:
    host = hosts(tiny_gpt2())
    for call in (host.stream, host.generate):
        with pytest.raises(InvalidRequestError, match=named):
            call([1, 2], 4, **options)

    async def main() -> None:
        await host.generate_async([1, 2], 4, **options)

    with pytest.raises(InvalidRequestError, match=named):
        asyncio.run(main())
    assert host.stats().requests == 0


def test_greedy_rows_beside_sampled_ones_stay_exact(hosts: Any) -> None:
    model = tiny_gpt2()
    gated = GatedModel(HFCausalLM(model), gate_at=0)
    host = hosts(gated, max_batch_size=8)
    texts = prompts([4, 7, 2, 12], seed=25)
    first = host.stream(texts[0], 14)
    assert gated.entered.wait(WAIT_S)
    others = [host.stream(t, 14, temperature=1.0 if i % 2 else 0.0, seed=i)
              for i, t in enumerate(texts[1:], start=1)]
    gated.release.set()
    assert first.result(WAIT_S) == reference(model, texts[0], 14)
    assert others[1].result(WAIT_S) == reference(model, texts[2], 14)
    assert all(len(s.result(WAIT_S)) == 14 for s in others)
    assert np.all(np.asarray(gated.step_rows[1:4]) == 4)


def test_the_device_path_draws_what_the_cpu_path_draws() -> None:
    # _draw_torch serves logits on a GPU; on CPU tensors it must agree with the NumPy path.
    from batch_inference.generation._sampling import _draw_numpy, _draw_torch

    logits = torch.randn(64, 300, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    settings = [(1.0, None, 1.0), (0.6, 7, 1.0), (1.4, None, 0.7), (0.9, 40, 0.95)]
    samplers = [RowSampler(*settings[i % 4], seed=i) for i in range(64)]
    uniforms = np.random.default_rng(5).random(64)
    rows = list(range(64))
    on_cpu = _draw_numpy(logits.numpy(), samplers, uniforms)
    assert _draw_torch(logits, samplers, rows, uniforms) == on_cpu
    assert len(set(on_cpu)) > 20


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_half_precision_cpu_logits_are_chosen_from(dtype: torch.dtype) -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, -1.0]], dtype=dtype)
    assert next_tokens(logits, [None, None]) == [1, 0]
    drawn = next_tokens(logits, [RowSampler(1.0, 1, 1.0, seed=0), RowSampler(1.0, 1, 1.0, seed=1)])
    assert drawn == [1, 0]  # top_k=1: the argmax, drawn through the sampling path
