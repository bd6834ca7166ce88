"""GenerationHost's semantics: bad input, cancellation, deadlines, back-pressure, stop, failures."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from concurrent.futures import CancelledError
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from _generation_support import POSITIONS, GatedModel, prompts, reference, tiny_gpt2

from batch_inference._queue import RequestQueue, oldest
from batch_inference._request import Request
from batch_inference.batcher.base import RequestInfo
from batch_inference.errors import (
    ConfigurationError,
    HostBrokenError,
    HostNotRunningError,
    HostStoppedError,
    InvalidRequestError,
    QueueFullError,
    RequestTimeoutError,
)
from batch_inference.generation import GenerationHost
from batch_inference.generation.hf import HFCausalLM

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


@pytest.mark.parametrize(
    ("prompt", "max_new_tokens", "named"),
    [
        ([], 4, "empty"),
        (torch.tensor([], dtype=torch.long), 4, "empty"),
        (torch.tensor([1.0, 2.0]), 4, "torch.float32"),
        (np.array([1.5]), 4, "float64"),
        (torch.tensor([True]), 4, "torch.bool"),
        ([1, 2.0], 4, "2.0"),
        ([1, True], 4, "True"),
        ("hello", 4, "str"),
        (torch.ones(2, 3, dtype=torch.long), 4, "(2, 3)"),
        ([1, 97], 4, "97"),
        ([1, -1], 4, "-1"),
        ([1] * 60, 5, "65 positions"),
        ([1, 2], 0, "got 0"),
        ([1, 2], 2.5, "2.5"),
    ],
)
def test_bad_request_is_refused_before_queueing(
    model: Any, hosts: Any, prompt: Any, max_new_tokens: Any, named: str
) -> None:
    host = hosts(model)
    with pytest.raises(InvalidRequestError, match=named.replace("(", r"\(").replace(")", r"\)")):
        host.stream(prompt, max_new_tokens)
    assert host.stats().requests == 0


def test_good_prompt_forms_are_accepted(model: Any, hosts: Any) -> None:
    host = hosts(model)
    expected = reference(model, [5, 6, 7], 3)
    forms = [[5, 6, 7], (5, 6, 7), torch.tensor([5, 6, 7]), torch.tensor([[5, 6, 7]]),
             np.array([5, 6, 7], dtype=np.int32)]
    assert [host.generate(f, 3, timeout=WAIT_S) for f in forms] == [expected] * len(forms)
    assert host.generate([1] * (POSITIONS - 4), 4, timeout=WAIT_S)  # exactly at the limit


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [({"max_batch_size": 0}, "max_batch_size"), ({"policy": "greedy"}, "greedy"),
     ({"eos_token_id": "x"}, "'x'"), ({"default_timeout_s": -1}, "-1"),
     ({"max_queue_size": 0}, "max_queue_size")],
)
def test_bad_settings_are_refused(model: Any, kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        GenerationHost(model, **kwargs)
    with pytest.raises(ConfigurationError, match="object"):
        GenerationHost(object())


def test_not_started_and_stopped_hosts_refuse(model: Any) -> None:
    host = GenerationHost(model)
    with pytest.raises(HostNotRunningError):
        host.stream([1], 2)
    host.start()
    assert host.generate([1, 2], 2, timeout=WAIT_S) == reference(model, [1, 2], 2)
    assert host.stop(timeout=10)
    with pytest.raises(HostNotRunningError):
        host.generate([1], 2)


@pytest.mark.parametrize("policy", ["continuous", "static"])
def test_cancel_mid_generation_drops_the_row_at_the_next_step(
    model: Any, hosts: Any, policy: str
) -> None:
    gated = GatedModel(HFCausalLM(model), gate_at=3)
    host = hosts(gated, max_batch_size=4, policy=policy)
    victim, other = (host.stream(p, 20) for p in prompts([4, 9], seed=7))
    assert gated.entered.wait(WAIT_S)
    victim.cancel()
    gated.release.set()
    with pytest.raises(CancelledError):
        victim.result(WAIT_S)
    assert victim.cancelled() and victim.done()
    assert list(victim.iter(timeout=WAIT_S)) == victim.tokens  # ends quietly, tokens kept
    assert victim.tokens == reference(model, victim.prompt, 20)[: len(victim.tokens)]
    assert other.result(WAIT_S) == reference(model, other.prompt, 20)
    rows = gated.step_rows
    assert rows[3] == 2 and rows[4] == 1  # the gated step was its last
    assert host.stats().cancelled == 1 and host.stats().completed == 1


def test_cancel_while_queued_never_runs(model: Any, hosts: Any) -> None:
    gated = GatedModel(HFCausalLM(model), gate_at=0)
    host = hosts(gated, max_batch_size=4, policy="static")
    running = host.stream([3, 4], 3)
    assert gated.entered.wait(WAIT_S)
    queued = host.stream([5, 6], 3)
    queued.cancel()
    with pytest.raises(CancelledError):
        queued.result(WAIT_S)
    gated.release.set()
    assert running.result(WAIT_S) == reference(model, [3, 4], 3)
    assert ("prefill", 1) in gated.calls and len(gated.calls) == 3  # only the running one
    assert queued.tokens == [] and host.stats().queue_depth == 0


def test_deadline_mid_generation_times_the_row_out(
    model: Any, hosts: Any, wait_past: Any
) -> None:
    gated = GatedModel(HFCausalLM(model), gate_at=2)
    host = hosts(gated, max_batch_size=4)
    late = host.stream([1, 2, 3], 30, timeout=0.05)
    fine = host.stream([4, 5], 30)
    assert gated.entered.wait(WAIT_S)
    wait_past(late.deadline_s)
    gated.release.set()
    with pytest.raises(RequestTimeoutError):
        late.result(WAIT_S)
    with pytest.raises(RequestTimeoutError):
        list(late.iter(timeout=WAIT_S))  # a stream raises its error after its tokens
    assert fine.result(WAIT_S) == reference(model, [4, 5], 30)
    assert host.stats().timed_out == 1


def test_back_pressure_refuses_beyond_max_queue_size(model: Any, hosts: Any) -> None:
    gated = GatedModel(HFCausalLM(model), gate_at=0)
    host = hosts(gated, max_batch_size=2, policy="static", max_queue_size=1)
    running = host.stream([1], 2)
    assert gated.entered.wait(WAIT_S)
    waiting = host.stream([2], 2)
    with pytest.raises(QueueFullError, match="max_queue_size=1"):
        host.stream([3], 2)
    gated.release.set()
    assert running.result(WAIT_S) == reference(model, [1], 2)
    assert waiting.result(WAIT_S) == reference(model, [2], 2)


def test_stop_drains_by_default(model: Any) -> None:
    gated = GatedModel(HFCausalLM(model), gate_at=1)
    host = GenerationHost(gated, max_batch_size=2, policy="static").start()
    streams = [host.stream(p, 6) for p in prompts([2, 3, 4], seed=8)]
    assert gated.entered.wait(WAIT_S)
    stopper = threading.Thread(target=host.stop, kwargs={"timeout": WAIT_S})
    stopper.start()
    gated.release.set()
    stopper.join(WAIT_S)
    assert not stopper.is_alive()
    for stream in streams:
        assert stream.result(0) == reference(model, stream.prompt, 6)


def test_stop_cancel_pending_answers_running_and_queued(model: Any) -> None:
    gated = GatedModel(HFCausalLM(model), gate_at=1)
    host = GenerationHost(gated, max_batch_size=2, policy="static").start()
    running = [host.stream(p, 20) for p in prompts([2, 3], seed=9)]
    assert gated.entered.wait(WAIT_S)
    queued = host.stream([7], 5)
    stopper = threading.Thread(target=host.stop, kwargs={"cancel_pending": True,
                                                         "timeout": WAIT_S})
    stopper.start()
    with pytest.raises(HostStoppedError):
        queued.result(WAIT_S)  # answered at once, the running batch still blocked
    gated.release.set()
    stopper.join(WAIT_S)
    assert not stopper.is_alive()
    for stream in running:
        with pytest.raises(HostStoppedError):
            stream.result(0)
        assert len(stream.tokens) == 3  # prefill, step 0, the gated step 1


def test_model_error_fails_its_rows_and_the_host_goes_on(model: Any, hosts: Any) -> None:
    gated = GatedModel(HFCausalLM(model), gate_at=None, fail_at=2, error=ValueError("bad step"))
    host = hosts(gated)
    stream = host.stream([1, 2], 10)
    with pytest.raises(ValueError, match="bad step"):
        stream.result(WAIT_S)
    assert host.generate([3, 4], 5, timeout=WAIT_S) == reference(model, [3, 4], 5)
    assert host.stats().failed == 1


def test_base_exception_breaks_the_host_and_answers_everyone(model: Any, hosts: Any) -> None:
    gated = GatedModel(HFCausalLM(model), gate_at=1, fail_at=1, error=KeyboardInterrupt())
    host = hosts(gated, policy="static")
    running = host.stream([1, 2], 10)
    assert gated.entered.wait(WAIT_S)
    queued = host.stream([3], 4)
    gated.release.set()
    for stream in (running, queued):
        with pytest.raises(HostBrokenError, match="KeyboardInterrupt"):
            stream.result(WAIT_S)
    with pytest.raises(HostBrokenError):
        host.stream([1], 2)


def test_stats_count_tokens_steps_and_first_tokens(model: Any, hosts: Any) -> None:
    host = hosts(model, max_batch_size=4)
    results = [host.generate(p, 4, timeout=WAIT_S) for p in prompts([2, 5], seed=10)]
    stats = host.stats()
    assert stats.completed == 2 and stats.generated_tokens == sum(map(len, results)) == 8
    assert stats.prefills == 2 and stats.steps == 6 and stats.model_calls == 8
    assert stats.time_to_first_token_s.count == 2 and stats.latency_s.count == 2
    assert stats.max_running == 1 and stats.tokens_per_s > 0


def test_package_import_does_not_import_transformers() -> None:
    code = ("import sys, batch_inference.generation; "
            "assert 'transformers' not in sys.modules, 'transformers imported'")
    import subprocess

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120,
                          text=True)
    assert done.returncode == 0, done.stderr


def _request(deadline_s: float | None = None) -> Request:
    return Request((), RequestInfo(), time.monotonic(), deadline_s)


def test_the_oldest_requests_are_taken_without_blocking() -> None:
    queue = RequestQueue(max_size=None)
    assert queue.take(oldest(4), lambda r: None, wait=False) == []  # nothing waits: at once
    cancelled, expired, first, second, third = (_request() for _ in range(5))
    expired.deadline_s = time.monotonic() - 1
    cancelled.future.cancel()
    for request in (cancelled, expired, first, second, third):
        queue.put(request)
    gone: list[Request] = []
    assert queue.take(oldest(4), gone.append, wait=False) == [first, second]
    assert gone == [expired] and first.future.running()
    assert len(queue) == 1 and queue.take(oldest(0), gone.append, wait=False) == []
    assert queue.take(oldest(5), gone.append) == [third] and len(queue) == 0
    queue.close()
    assert queue.take(oldest(5), gone.append) is None  # closed and empty: the end


def test_generate_gives_up_at_its_deadline_while_the_model_is_stuck(model: Any) -> None:
    gated = GatedModel(HFCausalLM(model), gate_at=0)
    host = GenerationHost(gated).start()
    try:
        first = host.stream([3], 4)
        assert gated.entered.wait(WAIT_S)
        with pytest.raises(RequestTimeoutError):
            host.generate([1, 2], 10, timeout=0.05)  # the gated step outlasts its deadline
    finally:
        gated.release.set()
        assert host.stop(timeout=WAIT_S)
    assert first.result(0) == reference(model, [3], 4)
    stats = host.stats()
    assert stats.cancelled == 1 and stats.completed == 1  # given up: it never ran
    assert [call for call in gated.calls if call[0] == "prefill"] == [("prefill", 1)]


def test_a_stopped_host_starts_again(model: Any) -> None:
    host = GenerationHost(model, max_batch_size=2)
    for _ in range(2):
        with host:
            assert host.running
            assert host.generate([4, 2], 3, timeout=WAIT_S) == reference(model, [4, 2], 3)
        assert not host.running
    assert host.stats().completed == host.stats().requests == 2  # counted across starts


def test_generate_async_gives_up_at_its_deadline_while_the_model_is_stuck(model: Any) -> None:
    gated = GatedModel(HFCausalLM(model), gate_at=0)
    host = GenerationHost(gated).start()
    try:
        first = host.stream([3], 4)  # held: a dropped stream is cancelled
        assert gated.entered.wait(WAIT_S)

        async def main() -> list[int]:
            return await host.generate_async([1, 2], 10, timeout=0.05)

        with pytest.raises(RequestTimeoutError):
            asyncio.run(main())
    finally:
        gated.release.set()
        assert host.stop(timeout=WAIT_S)
    assert first.result(0) == reference(model, [3], 4)
    assert host.stats().cancelled == 1
