"""Side-by-side comparisons: run a host under load, read its stats, tabulate the methods.

Used by the BERT tutorial (and any page that compares batchers). Nothing here
imports pandas: :func:`comparison_table` returns plain records that
``pandas.DataFrame(records)`` turns into a table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError
from ..stats import BatchFigures, HostStats
from .load import LoadResult, closed_loop
from .progress_bar import progress

__all__ = [
    "MethodResult",
    "StatsWindow",
    "TABLE_COLUMNS",
    "comparison_table",
    "measure_host",
    "median_of_rounds",
    "stats_between",
]

#: Columns of :func:`comparison_table`, in order: the five of batch-inference 1.0's BERT
#: page, then ours.
TABLE_COLUMNS = (
    "Method",
    "Query Count",
    "Execution Time",
    "Max Batch Size Setting",
    "Avg Batch Size",
    "Queries/s",
    "Speed-up",
)


@dataclass(frozen=True)
class StatsWindow(BatchFigures):
    """What a host did between two :meth:`~batch_inference.ModelHost.stats` snapshots.

    Attributes
    ----------
    requests:
        Requests accepted in the window.
    batches:
        ``predict_batch`` calls in the window.
    batch_sizes:
        ``{batch size: number of batches}`` in the window.
    real_tokens, padded_tokens:
        Tokens of the requests, and tokens computed with padding, in the window.
    model_busy_s:
        Seconds spent in ``predict_batch`` in the window.
    """

    requests: int
    batches: int
    batch_sizes: dict[int, int]
    real_tokens: int
    padded_tokens: int
    model_busy_s: float = 0.0



def stats_between(before: HostStats, after: HostStats) -> StatsWindow:
    """The difference of two snapshots of one host (``after`` taken later).

    Raises
    ------
    ConfigurationError
        When ``after`` holds fewer batches or requests than ``before``: the
        snapshots are swapped or come from different hosts.
    """
    if after.batches < before.batches or after.requests < before.requests:
        raise ConfigurationError(
            f"'after' has {after.batches} batches / {after.requests} requests, fewer than "
            f"'before' ({before.batches} / {before.requests}): swapped snapshots?"
        )
    sizes = {
        size: count - before.batch_sizes.get(size, 0)
        for size, count in after.batch_sizes.items()
        if count - before.batch_sizes.get(size, 0) > 0
    }
    return StatsWindow(
        requests=after.requests - before.requests,
        batches=after.batches - before.batches,
        batch_sizes=sizes,
        real_tokens=after.real_tokens - before.real_tokens,
        padded_tokens=after.padded_tokens - before.padded_tokens,
        model_busy_s=after.model_busy_s - before.model_busy_s,
    )


@dataclass(frozen=True)
class MethodResult:
    """One row of a comparison: a method, its setting and what it measured.

    Attributes
    ----------
    method:
        Display name (e.g. ``"Sequence Batcher"``).
    load:
        The measured run (:class:`~batch_inference.benchmark.LoadResult`).
    max_batch_size:
        The host's ``max_batch_size``; ``None`` for a baseline without a host.
    mean_batch_size:
        Average requests per ``predict_batch`` call in the measured run.
    padding_efficiency:
        Real tokens / padded tokens in the measured run.
    model_busy:
        Seconds in ``predict_batch`` over the run's wall time (``None`` without a host).
    """

    method: str
    load: LoadResult
    max_batch_size: int | None
    mean_batch_size: float
    padding_efficiency: float = 1.0
    model_busy: float | None = None


def measure_host(
    method: str,
    host: Any,
    queries: Sequence[tuple[Any, ...]],
    clients: int,
    warmup: Sequence[tuple[Any, ...]] = (),
    keep_outputs: bool = False,
    progress: Callable[[int], None] | None = None,
) -> MethodResult:
    """Run ``queries`` through a started ``host`` from ``clients`` threads.

    ``warmup`` queries go through the host first (same clients) and are not
    counted; the batch sizes and padding come from the host's stats over the
    measured run only. With ``keep_outputs``, ``result.load.outputs[i]`` is
    the answer to ``queries[i]``.
    """
    if warmup:
        closed_loop(host.predict, warmup, clients)
    before = host.stats()
    load = closed_loop(host.predict, queries, clients, keep_outputs=keep_outputs,
                       progress=progress)
    window = stats_between(before, host.stats())
    return MethodResult(
        method, load, host.max_batch_size, window.mean_batch_size, window.padding_efficiency,
        window.model_busy_s / load.wall_s if load.wall_s > 0 else None,
    )


def median_of_rounds(
    runs: Sequence[Callable[[], MethodResult]], rounds: int, desc: str = "measured runs"
) -> list[MethodResult]:
    """Run every method ``rounds`` times, interleaved; keep each one's median run.

    Round 1 runs every callable once, in order, then round 2, and so on, so a
    slow phase of a shared machine hits every method alike. For each callable
    the result with the median wall time is returned (the lower median for an
    even ``rounds``), in the order of ``runs``. Run from a terminal, a bar
    named ``desc`` counts the runs on stderr
    (:func:`~batch_inference.benchmark.progress_bar.progress`).
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigurationError(f"rounds must be a positive integer, got {rounds!r}")
    seen: list[list[MethodResult]] = [[] for _ in runs]
    steps = [(r, i) for r in range(rounds) for i in range(len(runs))]
    for _, i in progress(steps, desc, label=lambda step: f"round {step[0] + 1}/{rounds}"):
        seen[i].append(runs[i]())
    return [sorted(results, key=lambda r: r.load.wall_s)[(rounds - 1) // 2]
            for results in seen]


def comparison_table(results: Sequence[MethodResult], baseline: str = "Baseline") -> list[dict]:
    """One record per result with :data:`TABLE_COLUMNS`; speed-up is over ``baseline``.

    ``Execution Time`` is in seconds; ``Max Batch Size Setting`` is ``"/"``
    for a result without a host, as in the table of batch-inference 1.0's BERT page.

    Raises
    ------
    ConfigurationError
        When no result is named ``baseline``.
    """
    base = next((r for r in results if r.method == baseline), None)
    if base is None:
        names = [r.method for r in results]
        raise ConfigurationError(f"no result named {baseline!r} among {names!r}")
    records = []
    for r in results:
        records.append({
            "Method": r.method,
            "Query Count": r.load.queries,
            "Execution Time": round(r.load.wall_s, 2),
            "Max Batch Size Setting": "/" if r.max_batch_size is None else r.max_batch_size,
            "Avg Batch Size": round(r.mean_batch_size, 2),
            "Queries/s": round(r.load.qps, 1),
            "Speed-up": round(r.load.qps / base.load.qps, 2),
        })
    return records
