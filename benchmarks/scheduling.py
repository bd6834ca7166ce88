"""Scheduling policies side by side, against the offline ceiling of the same queries.

The ceiling is what no dynamic batching can beat: the same queries run
offline, sorted by length, in full batches (so almost nothing is padded and
no call is small). :func:`compare_policies` measures it and each policy in
one run, alternating them, so that the percentages compare like with like.

Nothing here imports pandas, matplotlib or transformers at import time.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from batch_inference.batcher import BucketSeqBatcher, LengthAwareBatcher, SeqBatcher
from batch_inference.batcher.base import Batcher
from batch_inference.benchmark.compare import stats_between
from batch_inference.benchmark.load import closed_loop, offline_batches
from batch_inference.benchmark.progress_bar import progress
from batch_inference.benchmark.simulate import (
    CostModel,
    SimulatedRun,
    simulate_closed_loop,
    simulate_offline,
)
from batch_inference.errors import ConfigurationError
from batch_inference.host import ModelHost

from .bert import BUCKETS

__all__ = [
    "Policy",
    "PolicyResult",
    "compare_policies",
    "length_sorted_batches",
    "run_policy",
    "simulate_policies",
    "standard_policies",
]


@dataclass(frozen=True)
class Policy:
    """A named way of serving: a batcher and the host's settings for it."""

    name: str
    batcher: Batcher
    max_batch_size: int = 32
    max_delay_s: float = 0.0
    host_options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyResult:
    """One policy at one concurrency level.

    Attributes
    ----------
    policy, clients:
        What ran, and how many client threads sent queries (one at a time each).
    queries, wall_s, qps:
        Queries answered, wall time and queries per second.
    p50_ms, p99_ms:
        Latency percentiles seen by the clients (milliseconds).
    mean_batch_size, padding_efficiency:
        From the host's stats over the measured run only.
    max_queue_wait_ms, max_model_ms:
        Longest a request waited for its batch to start, and the longest
        ``predict_batch`` call (host stats, over the warm-up and the run).
    ceiling_qps, pct_of_ceiling:
        The offline ceiling measured in the same run, and ``qps`` as a
        percentage of it.
    """

    policy: str
    clients: int
    queries: int
    wall_s: float
    qps: float
    p50_ms: float
    p99_ms: float
    mean_batch_size: float
    padding_efficiency: float
    max_queue_wait_ms: float
    max_model_ms: float = 0.0
    ceiling_qps: float = 0.0
    pct_of_ceiling: float = 0.0

    def record(self) -> dict[str, Any]:
        """The result as a plain dict (a table row, or JSON)."""
        return asdict(self)


def standard_policies(
    max_batch_size: int = 32, call_cost_tokens: float | None = None,
    delay_s: float | None = None,
) -> list[Policy]:
    """The policies the scheduling page and report compare, for ``(input_ids, mask)`` queries.

    ``"SeqBatcher"``, ``"BucketSeqBatcher"`` (buckets :data:`~benchmarks.bert.BUCKETS`) and
    ``"LengthAwareBatcher"`` (with ``call_cost_tokens`` where given), all with
    ``max_delay_s=0``; with ``delay_s``, also the length-aware batcher with
    ``max_delay_s=delay_s``, named ``"LengthAwareBatcher, max_delay_s=<delay_s>"``.
    """
    options = {} if call_cost_tokens is None else {"call_cost_tokens": call_cost_tokens}
    aware = LengthAwareBatcher([0, 0], tensor="pt", **options)
    policies = [
        Policy("SeqBatcher", SeqBatcher([0, 0], tensor="pt"), max_batch_size),
        Policy("BucketSeqBatcher", BucketSeqBatcher([0, 0], list(BUCKETS), tensor="pt"),
               max_batch_size),
        Policy("LengthAwareBatcher", aware, max_batch_size),
    ]
    if delay_s is not None:
        policies.append(Policy(f"LengthAwareBatcher, max_delay_s={delay_s}", aware,
                               max_batch_size, delay_s))
    return policies


def length_sorted_batches(
    queries: Sequence[tuple[Any, ...]], batch_size: int, padding_tokens: Sequence[Any]
) -> list[tuple[Any, ...]]:
    """The queries sorted by length and stacked into padded batches of ``batch_size``.

    Each query is a tuple of ``(1, length)`` tensors; argument ``j`` is padded
    with ``padding_tokens[j]``.
    """
    import torch

    if batch_size < 1:
        raise ConfigurationError(f"batch_size must be >= 1, got {batch_size!r}")
    ordered = sorted(queries, key=lambda q: int(q[0].shape[-1]))
    batches = []
    for start in range(0, len(ordered), batch_size):
        chunk = ordered[start : start + batch_size]
        longest = int(chunk[-1][0].shape[-1])
        args = []
        for position, token in enumerate(padding_tokens):
            first = chunk[0][position]
            out = torch.full((len(chunk), longest), token, dtype=first.dtype)
            for row, query in enumerate(chunk):
                value = query[position]
                out[row, : value.shape[-1]] = value[0]
            args.append(out)
        batches.append(tuple(args))
    return batches


def run_policy(
    model: Any,
    policy: Policy,
    queries: Sequence[tuple[Any, ...]],
    clients: int,
    warmup: int = 64,
) -> PolicyResult:
    """Serve ``queries`` through a fresh host with ``policy`` from ``clients`` threads.

    The first ``warmup`` queries are sent once before the clock starts; the
    batch sizes, padding and queue wait come from the host's stats over the
    measured run only.
    """
    host = ModelHost(
        model_obj=model,
        batcher=policy.batcher,
        max_batch_size=policy.max_batch_size,
        max_delay_s=policy.max_delay_s,
        **dict(policy.host_options),
    )
    with host:
        if warmup:
            closed_loop(host.predict, queries[:warmup], clients)
        before = host.stats()
        load = closed_loop(host.predict, queries, clients)
        after = host.stats()
    window = stats_between(before, after)
    return PolicyResult(
        policy=policy.name,
        clients=clients,
        queries=load.queries,
        wall_s=load.wall_s,
        qps=load.qps,
        p50_ms=load.p50_s * 1e3,
        p99_ms=load.p99_s * 1e3,
        mean_batch_size=window.mean_batch_size,
        padding_efficiency=window.padding_efficiency,
        max_queue_wait_ms=after.queue_wait_s.max * 1e3,
        max_model_ms=after.model_time_s.max * 1e3,
    )


def compare_policies(
    model: Any,
    policies: Sequence[Policy],
    queries: Sequence[tuple[Any, ...]],
    clients: Sequence[int],
    ceiling_batch_size: int = 32,
    padding_tokens: Sequence[Any] = (0, 0),
    repeats: int = 1,
    synchronize: Callable[[], None] | None = None,
    desc: str = "policy runs",
) -> tuple[list[PolicyResult], list[float]]:
    """Measure the ceiling and every policy at every concurrency, alternating.

    Each repeat runs every (clients, policy) pair, each right after a run of
    the ceiling, so that a passing disturbance of the machine touches a run
    and its ceiling alike. A policy's ``pct_of_ceiling`` is the median, over
    the repeats, of its queries per second over the adjacent ceiling's; its
    other figures come from its median run (by queries per second); its
    ``ceiling_qps`` is the median of all ceiling runs. Run from a terminal, a
    bar named ``desc`` counts the runs on stderr
    (:func:`~batch_inference.benchmark.progress_bar.progress`).

    Returns
    -------
    results, ceilings
        One :class:`PolicyResult` per (clients, policy); and every ceiling
        measurement (queries per second).
    """
    if repeats < 1:
        raise ConfigurationError(f"repeats must be >= 1, got {repeats!r}")
    predict = model.predict_batch
    offline = length_sorted_batches(queries, ceiling_batch_size, padding_tokens)
    offline_batches(predict, offline[:2], synchronize)  # warm up
    ceilings: list[float] = []
    runs: dict[tuple[int, str], list[tuple[PolicyResult, float]]] = {}
    steps = [(count, policy) for _ in range(repeats) for count in clients for policy in policies]
    for count, policy in progress(steps, desc, label=lambda s: f"{s[1].name}, {s[0]} clients"):
        ceilings.append(len(queries) / offline_batches(predict, offline, synchronize))
        result = run_policy(model, policy, queries, count)
        runs.setdefault((count, policy.name), []).append((result, ceilings[-1]))
    ceiling = statistics.median(ceilings)
    results = []
    for measured in runs.values():
        middle = sorted(measured, key=lambda pair: pair[0].qps)[len(measured) // 2][0]
        pct = statistics.median(100.0 * r.qps / c for r, c in measured)
        fields = middle.record()
        fields.update(ceiling_qps=ceiling, pct_of_ceiling=pct)
        results.append(PolicyResult(**fields))
    return results, ceilings


def simulate_policies(
    policies: Sequence[Policy],
    lengths: Sequence[int],
    clients: Sequence[int],
    cost: CostModel,
    request_args: Callable[[int], tuple[Any, ...]],
    ceiling_batch_size: int = 32,
) -> tuple[SimulatedRun, dict[tuple[str, int], SimulatedRun]]:
    """Each policy at each concurrency served in simulated time, with no host.

    Returns the simulated offline ceiling (``lengths`` sorted, in batches of
    ``ceiling_batch_size``) and one run per ``(policy name, clients)``; see
    :func:`~batch_inference.benchmark.simulate.simulate_closed_loop`.
    """
    ceiling = simulate_offline(lengths, ceiling_batch_size, cost)
    runs = {
        (policy.name, count): simulate_closed_loop(
            policy.batcher, lengths, count, cost, request_args, policy.max_batch_size,
            policy.max_delay_s,
        )
        for count in clients
        for policy in policies
    }
    return ceiling, runs
