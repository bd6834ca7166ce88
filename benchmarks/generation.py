"""Measuring batched generation: GPT-2 models, workloads, closed-loop and Poisson runs.

Used by the *GPT completion* tutorial. Every run builds a fresh
:class:`~batch_inference.generation.GenerationHost` with one of three methods
(:data:`METHODS`): one query at a time (with a KV cache), static batching
(batch-inference 1.0's way, with correct padding) and continuous batching.
Every load loop is bounded in count and in time. transformers is imported
only by :func:`load_gpt2`.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from batch_inference.benchmark.load import closed_loop
from batch_inference.errors import ConfigurationError
from batch_inference.generation import GenerationHost
from batch_inference.generation.protocol import StepModel

__all__ = [
    "METHODS",
    "QUICK_CONFIG",
    "GenerationRun",
    "LoadedLM",
    "generation_table",
    "latency_table",
    "load_gpt2",
    "make_workload",
    "median_run",
    "run_closed_loop",
    "run_poisson",
    "step_cost_curve",
]

#: ``{method: (max_batch_size or None for the run's, policy)}``.
METHODS: dict[str, tuple[int | None, str]] = {
    "Baseline": (1, "continuous"),
    "Static batching": (None, "static"),
    "Continuous batching": (None, "continuous"),
}

#: The quick mode's model: GPT-2's architecture, scaled down for a CPU docs build.
QUICK_CONFIG: dict[str, Any] = {
    "n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 256, "vocab_size": 4096,
    "initializer_range": 0.2,  # wider than GPT-2's 0.02: a random model then varies its tokens
}

#: A workload: one ``(prompt token ids, max_new_tokens)`` per query.
Workload = list[tuple[list[int], int]]


@dataclass(frozen=True)
class LoadedLM:
    """A causal LM ready to serve, and what it is (printed by the pages)."""

    model: Any
    weights: str
    vocab_size: int
    max_positions: int


def load_gpt2(mode: str, seed: int = 0, device: str = "cpu") -> LoadedLM:
    """The page's model: ``gpt2`` (124M) in full mode, :data:`QUICK_CONFIG` in quick mode.

    Full mode loads the pretrained ``gpt2`` weights where they load offline
    (from the local cache), and otherwise initialises GPT-2's 124M
    architecture at random (``seed``); quick mode always initialises at random.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    if mode not in ("quick", "full"):
        raise ConfigurationError(f"mode must be 'quick' or 'full', got {mode!r}")
    model = None
    if mode == "full":
        try:
            model = GPT2LMHeadModel.from_pretrained("gpt2", local_files_only=True)
            weights = "gpt2 (124M), pretrained"
        except (OSError, ValueError) as error:
            weights = (f"gpt2 architecture (124M), random-initialised with seed {seed} "
                       f"(pretrained weights not available offline: {type(error).__name__})")
    if model is None:
        torch.manual_seed(seed)
        settings = {} if mode == "full" else QUICK_CONFIG
        config = GPT2Config(**settings)
        model = GPT2LMHeadModel(config)
        if mode == "quick":
            weights = (f"GPT-2 architecture ({config.n_layer} layers, {config.n_embd} wide, "
                       f"vocabulary {config.vocab_size}), random-initialised with seed {seed}")
    model = model.to(device).eval()
    return LoadedLM(model, weights, model.config.vocab_size, model.config.n_positions)


def make_workload(
    count: int,
    prompt_lengths: tuple[int, int],
    new_tokens: tuple[int, int],
    vocab_size: int,
    seed: int = 0,
) -> Workload:
    """``count`` queries: prompt lengths and ``max_new_tokens`` uniform in the inclusive ranges."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(prompt_lengths[0], prompt_lengths[1] + 1, count)
    budgets = rng.integers(new_tokens[0], new_tokens[1] + 1, count)
    return [(rng.integers(0, vocab_size, int(n)).tolist(), int(b))
            for n, b in zip(lengths, budgets)]


@dataclass
class GenerationRun:
    """What one method did on one workload.

    ``ttft_s`` and ``latency_s`` are per query (from queueing to the first
    token, to the last); ``outputs`` are the completions in workload order.
    """

    method: str
    queries: int
    wall_s: float
    generated_tokens: int
    max_batch_size: int
    mean_batch_size: float
    model_calls: int
    ttft_s: list[float] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    outputs: list[list[int]] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.wall_s if self.wall_s > 0 else 0.0

    def percentile_s(self, name: str, q: float) -> float:
        """The ``q``-th percentile of ``ttft_s`` or ``latency_s``."""
        return float(np.percentile(getattr(self, name), q))


def _host(model: Any, method: str, max_batch_size: int) -> GenerationHost:
    if method not in METHODS:
        raise ConfigurationError(f"method must be one of {list(METHODS)}, got {method!r}")
    size, policy = METHODS[method]
    return GenerationHost(model, max_batch_size=size or max_batch_size, policy=policy)


def _finish(method: str, host: GenerationHost, wall_s: float, streams: list[Any],
            outputs: list[list[int]]) -> GenerationRun:
    stats = host.stats()
    return GenerationRun(
        method, len(outputs), wall_s, stats.generated_tokens, stats.max_running,
        stats.mean_running, stats.model_calls,
        [s.first_token_s - s.queued_s for s in streams],
        [s.finished_s - s.queued_s for s in streams], outputs,
    )


def run_closed_loop(model: Any, method: str, workload: Workload, clients: int,
                    max_batch_size: int, timeout_s: float = 600.0,
                    sampling: dict[str, Any] | None = None) -> GenerationRun:
    """``clients`` threads send the workload's queries, each one at a time (1.0's loop).

    ``sampling`` (e.g. ``{"temperature": 0.8, "top_p": 0.95}``) is passed to
    every ``host.stream`` call; ``None`` decodes greedily.
    """
    with _host(model, method, max_batch_size) as host:
        streams: list[Any] = [None] * len(workload)

        def call(i: int) -> list[int]:
            streams[i] = stream = host.stream(*workload[i], timeout=timeout_s, **(sampling or {}))
            return stream.result(timeout_s)

        result = closed_loop(call, [(i,) for i in range(len(workload))], clients)
        return _finish(method, host, result.wall_s, streams, [s.result(0) for s in streams])


def run_poisson(model: Any, method: str, workload: Workload, rate_per_s: float,
                max_batch_size: int, seed: int = 0, timeout_s: float = 600.0) -> GenerationRun:
    """The workload's queries arrive as a Poisson process of ``rate_per_s``; wait for all."""
    if not rate_per_s > 0:
        raise ConfigurationError(f"rate_per_s must be > 0, got {rate_per_s!r}")
    gaps_s = np.random.default_rng(seed).exponential(1.0 / rate_per_s, len(workload))
    clock = threading.Event()  # never set: a bounded wait until each arrival
    with _host(model, method, max_batch_size) as host:
        start_s = time.monotonic()
        due_s = start_s
        streams = []
        for (prompt, budget), gap_s in zip(workload, gaps_s):
            due_s += float(gap_s)
            clock.wait(max(0.0, due_s - time.monotonic()))
            streams.append(host.stream(prompt, budget, timeout=timeout_s))
        outputs = [s.result(timeout_s) for s in streams]
        wall_s = max(s.finished_s for s in streams) - start_s
        return _finish(method, host, wall_s, streams, outputs)


def step_cost_curve(model: Any, batch_sizes: Sequence[int], context: int = 32,
                    steps: int = 12) -> dict[int, float]:
    """Median seconds of one decoding step at each batch size (``context`` tokens each).

    A step is timed up to its tokens as Python ints (the host needs them), so on a GPU
    the time includes waiting for the device.
    """
    from batch_inference.generation.host import as_step_model
    from batch_inference.generation.protocol import greedy_tokens

    lm: StepModel = as_step_model(model)
    curve = {}
    for size in batch_sizes:
        batch, logits = lm.prefill([[1] * context] * size)
        tokens = [1] * size
        times = []
        for _ in range(steps + 2):  # the first two are warm-up
            start = time.perf_counter()
            batch, logits = lm.step(batch, tokens)
            greedy_tokens(logits)
            times.append(time.perf_counter() - start)
        curve[size] = statistics.median(times[2:])
    return curve


def median_run(runs: Sequence[GenerationRun]) -> GenerationRun:
    """The run of median tokens/s among rounds of one method (the lower middle for even counts)."""
    if not runs or len({r.method for r in runs}) != 1:
        raise ConfigurationError(
            f"median_run needs rounds of one method, got {[r.method for r in runs]}"
        )
    ordered = sorted(runs, key=lambda r: r.tokens_per_s)
    return ordered[(len(ordered) - 1) // 2]


def generation_table(runs: Sequence[GenerationRun], baseline: str = "Baseline") -> list[dict]:
    """batch-inference 1.0's GPT completion table, plus tokens/s: one record per run."""
    base = next((r for r in runs if r.method == baseline), None)
    if base is None:
        raise ConfigurationError(f"no run named {baseline!r} among {[r.method for r in runs]}")
    return [{
        "Method": r.method,
        "Query Count": r.queries,
        "Execution Time": f"{r.wall_s:.2f} s",
        "Throughput comparing to Baseline": f"{r.tokens_per_s / base.tokens_per_s:.2f}x",
        "Max Batch Size": r.max_batch_size,
        "Avg Batch Size": round(r.mean_batch_size, 2),
        "Generated Token Count": r.generated_tokens,
        "Inference Count": r.model_calls,
        "Tokens/s": round(r.tokens_per_s, 1),
    } for r in runs]


def latency_table(runs: Sequence[GenerationRun]) -> list[dict]:
    """Tokens/s, time to first token and latency (p50/p99, ms) of each run."""
    return [{
        "Method": r.method,
        "Tokens/s": round(r.tokens_per_s, 1),
        "TTFT p50 (ms)": round(r.percentile_s("ttft_s", 50) * 1e3, 1),
        "TTFT p99 (ms)": round(r.percentile_s("ttft_s", 99) * 1e3, 1),
        "Latency p50 (ms)": round(r.percentile_s("latency_s", 50) * 1e3, 1),
        "Latency p99 (ms)": round(r.percentile_s("latency_s", 99) * 1e3, 1),
    } for r in runs]
