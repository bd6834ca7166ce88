"""Per-step host overhead of GenerationHost: time outside the model per loop turn.

Serves the GPT page's quick model (``load_gpt2("quick")``: a random 2-layer GPT-2,
vocabulary 4096) with one torch thread, as the page does. Every query is queued at
once, so the worker decodes a full running batch while requests join and leave. Each
turn of the decoding loop (one step boundary: sweep, join, step, finish) is timed with
``time.perf_counter``, and so is every model call (``prefill``/``step``) inside it; the
host's overhead is the turn's time minus its model time (choosing tokens from the
logits, publishing them, finishing rows, filtering the running batch...).

Run from the repository root::

    PYTHONPATH=$PWD python tools/generation_overhead.py [--queries 128] [--sampled]

It prints one JSON line (the median round by CPU share): turns, median turn and model
time (us), the median and mean overhead per turn (us) and the overhead as a share of
all turn time, in wall-clock time and in the worker thread's CPU time
(``time.thread_time``: on a shared machine, waiting for a core inflates wall time). A private hook
(``DecodeLoop._turn``) is wrapped: this is a measuring tool, not part of the package.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from batch_inference.generation import GenerationHost, _loop
from batch_inference.generation.host import as_step_model
from benchmarks.generation import load_gpt2, make_workload


class TimedModel:
    """A step-wise model that adds the wall and CPU seconds of every call to its totals."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.max_positions = inner.max_positions
        self.vocab_size = inner.vocab_size
        self.model_s = 0.0
        self.model_cpu_s = 0.0

    def _timed(self, call: Any, *args: Any) -> Any:
        start, start_cpu = time.perf_counter(), time.thread_time()
        try:
            return call(*args)
        finally:
            self.model_s += time.perf_counter() - start
            self.model_cpu_s += time.thread_time() - start_cpu

    def prefill(self, prompts: Any) -> Any:
        return self._timed(self.inner.prefill, prompts)

    def step(self, batch: Any, tokens: Any) -> Any:
        return self._timed(self.inner.step, batch, tokens)


def measure(queries: int, max_batch_size: int, sampled: bool, seed: int = 1) -> dict[str, Any]:
    """Serve ``queries`` queued at once; per-turn model and host seconds."""
    lm = load_gpt2("quick", seed=0)
    timed = TimedModel(as_step_model(lm.model))
    workload = make_workload(queries, (4, 32), (8, 64), lm.vocab_size, seed=seed)
    turns: list[tuple[float, float]] = []  # (turn_s, model_s), wall clock
    cpu: list[tuple[float, float]] = []  # the same in the worker thread's CPU time
    original = _loop.DecodeLoop._turn

    def timed_turn(loop: Any) -> bool:
        before_s, before_cpu_s = timed.model_s, timed.model_cpu_s
        start, start_cpu = time.perf_counter(), time.thread_time()
        more = original(loop)
        turns.append((time.perf_counter() - start, timed.model_s - before_s))
        cpu.append((time.thread_time() - start_cpu, timed.model_cpu_s - before_cpu_s))
        return more

    options = {"temperature": 0.8, "top_p": 0.95} if sampled else {}
    # warm-up (its own host): the first calls allocate and compile kernels
    with GenerationHost(timed, max_batch_size=max_batch_size) as host:
        for stream in [host.stream(p, n) for p, n in workload[:8]]:
            stream.result(600)
    _loop.DecodeLoop._turn = timed_turn
    try:
        with GenerationHost(timed, max_batch_size=max_batch_size) as host:
            streams = [host.stream(p, n, seed=i, **options) if sampled else host.stream(p, n)
                       for i, (p, n) in enumerate(workload)]
            for stream in streams:
                stream.result(600)
    finally:
        _loop.DecodeLoop._turn = original
    called = [i for i, t in enumerate(turns) if t[1] > 0]  # turns that called the model
    turns, cpu = [turns[i] for i in called], [cpu[i] for i in called]
    overhead = [t - m for t, m in turns]
    overhead_cpu = [t - m for t, m in cpu]
    return {
        "queries": queries,
        "max_batch_size": max_batch_size,
        "sampled": sampled,
        "turns": len(turns),
        "turn_median_us": round(statistics.median(t for t, _ in turns) * 1e6, 1),
        "model_median_us": round(statistics.median(m for _, m in turns) * 1e6, 1),
        "overhead_median_us": round(statistics.median(overhead) * 1e6, 1),
        "overhead_mean_us": round(statistics.fmean(overhead) * 1e6, 1),
        "overhead_share": round(sum(overhead) / sum(t for t, _ in turns), 4),
        # CPU time of the worker thread: what the host computes, not how long it waited
        # for a core (robust on a shared machine)
        "cpu_overhead_median_us": round(statistics.median(overhead_cpu) * 1e6, 1),
        "cpu_overhead_share": round(sum(overhead_cpu) / sum(t for t, _ in cpu), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--sampled", action="store_true",
                        help="temperature 0.8, top-p 0.95, one seed per query")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = [measure(args.queries, args.max_batch_size, args.sampled) for _ in range(args.rounds)]
    runs.sort(key=lambda r: r["cpu_overhead_share"])
    print(json.dumps({"torch_threads": torch.get_num_threads(), **runs[len(runs) // 2],
                      "cpu_overhead_share_all_rounds": [r["cpu_overhead_share"] for r in runs],
                      "overhead_share_all_rounds": [r["overhead_share"] for r in runs]}))


if __name__ == "__main__":
    main()
