"""transformers' own continuous batching, run the way the GPT page runs ``GenerationHost``.

transformers 5 gives every causal LM ``model.init_continuous_batching()``: a
``ContinuousBatchingManager`` with a generation thread of its own (a paged KV
cache, requests added with ``add_request`` and results read from one shared
output queue; ``model.generate_batch(prompts)`` wraps it for one offline
batch, with one ``max_new_tokens`` for all). :class:`HFContinuousBatching`
starts a manager sized for the page's workload and routes its results to
the threads that asked (one router thread); :func:`run_hf_closed_loop` then
serves a workload from ``clients`` closed-loop threads, as
:func:`~benchmarks.generation.run_closed_loop` does, and
returns the same :class:`~benchmarks.generation.GenerationRun`.

Its time to first token comes from the manager's own per-token timestamps
(``record_timestamps=True``, ``time.perf_counter`` from the moment the request
was created). transformers is imported when a manager is built.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import Future
from types import TracebackType
from typing import Any

from batch_inference.benchmark.load import closed_loop
from batch_inference.errors import ConfigurationError
from benchmarks.generation import GenerationRun, Workload

__all__ = ["HF_METHOD", "HFContinuousBatching", "HFGenerationError", "run_hf_closed_loop"]

#: The method name of its runs (a row label on the GPT page).
HF_METHOD = "transformers continuous batching"


class HFGenerationError(RuntimeError):
    """transformers' manager reported a request as failed (its message is quoted)."""


class HFContinuousBatching:
    """A started ``ContinuousBatchingManager``: ``generate(prompt, n)`` from any thread.

    Parameters
    ----------
    model:
        A transformers causal LM (eval mode, on its device).
    max_batch_size:
        Most requests decoded together (``max_requests_per_batch``).
    max_length:
        Longest prompt plus ``max_new_tokens`` of any request: sizes the paged
        cache (one page per request and a spare as many again).
    max_prompt_length:
        Longest prompt: with ``max_batch_size`` sizes the tokens one forward
        pass may hold (every waiting prompt can be prefilled at once, as
        ``GenerationHost`` does).

    Greedy decoding (``do_sample=False``), no EOS: a request ends at its own
    ``max_new_tokens``, as on the page. Leave the ``with`` block to stop the
    manager (its thread is joined, bounded) and the router.
    """

    def __init__(self, model: Any, max_batch_size: int, max_length: int,
                 max_prompt_length: int) -> None:
        for name, value in (("max_batch_size", max_batch_size), ("max_length", max_length),
                            ("max_prompt_length", max_prompt_length)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be an integer >= 1, got {value!r}")
        self.model = model
        self.max_batch_size = max_batch_size
        self.page_size = 128
        self.num_blocks = 2 * max_batch_size * math.ceil(max_length / self.page_size)
        self.max_batch_tokens = max_batch_size * max(max_prompt_length, 1)
        self.manager: Any = None
        self._waiting: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._router: threading.Thread | None = None

    @property
    def model_calls(self) -> int:
        """Forward passes the manager ran since it started (prefill chunks and decode steps)."""
        return int(getattr(self.manager, "current_batch", 0) or 0)

    def __enter__(self) -> HFContinuousBatching:
        from transformers import ContinuousBatchingConfig, GenerationConfig

        generation = GenerationConfig(do_sample=False, eos_token_id=-1, pad_token_id=0)
        batching = ContinuousBatchingConfig(
            page_size=self.page_size, num_blocks=self.num_blocks,
            max_batch_tokens=self.max_batch_tokens, max_requests_per_batch=self.max_batch_size,
            allow_block_sharing=False)  # random prompts share no prefix
        self.manager = self.model.init_continuous_batching(
            generation_config=generation, continuous_batching_config=batching)
        self.manager.start()
        self._router = threading.Thread(target=self._route, name="hf-results", daemon=True)
        self._router.start()
        return self

    def _route(self) -> None:
        """Hand each finished result to the thread that waits for it."""
        while not self._stop.is_set():
            result = self.manager.get_result(timeout=0.05)
            if result is None:
                if not self.manager.is_running():
                    self._stop.wait(0.05)  # stopped or crashed: the callers' timeouts answer
                continue
            if result.is_finished():
                with self._lock:
                    future = self._waiting.pop(result.request_id, None)
                if future is not None:
                    future.set_result(result)

    def generate(self, prompt: list[int], max_new_tokens: int, timeout_s: float = 600.0) -> Any:
        """The manager's finished ``GenerationOutput`` for ``prompt`` (blocks, bounded)."""
        future: Future = Future()
        with self._lock:
            request_id = self.manager.add_request(list(prompt), max_new_tokens=max_new_tokens,
                                                  record_timestamps=True)
            if request_id is None:
                raise HFGenerationError("the manager refused the request (it is stopping)")
            self._waiting[request_id] = future
        result = future.result(timeout_s)
        if result.error is not None:
            raise HFGenerationError(f"request {request_id} failed: {result.error}")
        return result

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.manager.stop(block=True, timeout=30.0)
            self.manager.destroy()
        finally:
            self._stop.set()
            if self._router is not None:
                self._router.join(30.0)


def run_hf_closed_loop(model: Any, workload: Workload, clients: int, max_batch_size: int,
                       timeout_s: float = 600.0) -> GenerationRun:
    """``clients`` threads send the workload's queries to transformers' manager, one at a time.

    ``mean_batch_size`` is tokens generated per forward pass (the manager
    reports no batch sizes); ``ttft_s`` and ``latency_s`` are from the
    request's creation to its first and last token.
    """
    longest = max(len(p) + n for p, n in workload)
    with HFContinuousBatching(model, max_batch_size, longest,
                              max(len(p) for p, _ in workload)) as hf:
        results: list[Any] = [None] * len(workload)

        def call(i: int) -> None:
            results[i] = hf.generate(*workload[i], timeout_s=timeout_s)

        load = closed_loop(call, [(i,) for i in range(len(workload))], clients)
        calls = hf.model_calls
    outputs = [list(r.generated_tokens) for r in results]
    tokens = sum(len(o) for o in outputs)
    return GenerationRun(
        HF_METHOD, len(workload), load.wall_s, tokens, max_batch_size,
        tokens / calls if calls else 0.0, calls,
        [r.timestamps[0] - r.created_time for r in results],
        [r.timestamps[-1] - r.created_time for r in results], outputs,
    )
