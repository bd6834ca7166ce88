"""What a batching policy could reach with no host at all: a closed loop, simulated.

A model's call time is fitted once from real calls (:func:`fit_cost_model`);
then :func:`simulate_closed_loop` replays a closed-loop workload through a
batcher's own ``select`` in simulated time: no threads, no queue, no
hand-offs, every returning client re-submits at once. The result is the
policy's own limit on that workload; a measured run divided by it is what the
host keeps of it, and two policies' simulated figures bound the ratio any host
could show between them.

Nothing here imports pandas, matplotlib or transformers at import time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..batcher.base import Batcher, BatchLimits, Waiting
from ..errors import ConfigurationError
from .load import on_own_thread

__all__ = [
    "CostModel",
    "SimulatedRun",
    "fit_cost_model",
    "simulate_closed_loop",
    "simulate_offline",
]


@dataclass(frozen=True)
class CostModel:
    """Seconds of one ``predict_batch`` call on ``rows`` sequences padded to ``length``.

    ``call_s + token_s * rows * length + attention_s * rows * length ** 2``:
    a fixed cost per call, a cost per padded token, and attention's
    quadratic term.
    """

    call_s: float
    token_s: float
    attention_s: float = 0.0

    def seconds(self, rows: int, length: int) -> float:
        tokens = rows * length
        return self.call_s + self.token_s * tokens + self.attention_s * tokens * length

    @property
    def call_cost_tokens(self) -> float:
        """The fixed cost of a call in padded tokens (``LengthAwareBatcher``'s setting)."""
        return self.call_s / self.token_s if self.token_s > 0 else float("inf")

    def record(self) -> dict[str, float]:
        return asdict(self)


def fit_cost_model(
    predict_batch: Callable[..., Any],
    make_batch: Callable[[int, int], tuple[Any, ...]],
    rows: Sequence[int] = (1, 8, 32),
    lengths: Sequence[int] = (8, 32, 64),
    repeats: int = 3,
    synchronize: Callable[[], None] | None = None,
) -> CostModel:
    """Time ``predict_batch(*make_batch(r, l))`` on a grid and fit a :class:`CostModel`.

    Each point is the median of ``repeats`` calls after one warm-up call; the
    fit is least squares, every coefficient at least zero. The calls run on a
    thread of their own (see :func:`~batch_inference.benchmark.on_own_thread`).
    """
    if repeats < 1:
        raise ConfigurationError(f"repeats must be >= 1, got {repeats!r}")
    points = [(r, n) for r in rows for n in lengths]
    if len(points) < 3 or any(r < 1 or n < 1 for r, n in points):
        raise ConfigurationError(
            f"fit_cost_model needs at least 3 grid points of positive rows and lengths, "
            f"got rows={tuple(rows)!r}, lengths={tuple(lengths)!r}"
        )

    def measure() -> list[float]:
        medians = []
        for r, n in points:
            batch = make_batch(r, n)
            predict_batch(*batch)  # warm up this shape
            times = []
            for _ in range(repeats):
                if synchronize is not None:
                    synchronize()
                started = time.perf_counter()
                predict_batch(*batch)
                if synchronize is not None:
                    synchronize()
                times.append(time.perf_counter() - started)
            medians.append(statistics.median(times))
        return medians

    seconds = on_own_thread(measure)
    design = [[1.0, r * n, r * n * n] for r, n in points]
    return CostModel(*_non_negative_least_squares(design, seconds))


def _non_negative_least_squares(design: list[list[float]], target: list[float]) -> list[float]:
    """Least squares with every coefficient >= 0: the best of the fits on column subsets."""
    import itertools

    import numpy as np

    matrix, values = np.asarray(design, dtype=float), np.asarray(target, dtype=float)
    width = matrix.shape[1]
    best: tuple[float, list[float]] = (float("inf"), [0.0] * width)
    for size in range(1, width + 1):
        for columns in itertools.combinations(range(width), size):
            fitted, *_ = np.linalg.lstsq(matrix[:, columns], values, rcond=None)
            if (fitted < 0).any():
                continue
            residual = float(((matrix[:, columns] @ fitted - values) ** 2).sum())
            if residual < best[0]:
                coefficients = [0.0] * width
                for column, value in zip(columns, fitted):
                    coefficients[column] = float(value)
                best = (residual, coefficients)
    return best[1]


@dataclass(frozen=True)
class SimulatedRun:
    """One simulated closed-loop run (see :func:`simulate_closed_loop`)."""

    queries: int
    clients: int
    seconds: float
    calls: int
    padding_efficiency: float

    @property
    def qps(self) -> float:
        return self.queries / self.seconds if self.seconds > 0 else float("inf")


def simulate_closed_loop(
    batcher: Batcher,
    lengths: Sequence[int],
    clients: int,
    cost: CostModel,
    request_args: Callable[[int], tuple[Any, ...]],
    max_batch_size: int = 32,
    max_delay_s: float = 0.0,
) -> SimulatedRun:
    """Serve queries of ``lengths`` (in order) from ``clients`` closed-loop clients, simulated.

    ``clients`` requests wait at the start. Whenever the model is free, the
    batcher's ``select`` picks the next batch from the waiting requests (as
    the host asks it when its model is idle); the batch runs for
    ``cost.seconds(rows, longest)``, and its clients send their next queries
    at once, so they wait for the batch after it. ``request_args(length)``
    builds one request, for ``batcher.inspect`` (which gives its length and key).
    """
    if clients < 1:
        raise ConfigurationError(f"clients must be >= 1, got {clients!r}")
    limits = BatchLimits(max_batch_size, None, max_delay_s)
    infos: dict[int, Any] = {}
    waiting: list[Waiting] = []
    now_s = 0.0
    sent = 0

    def send(count: int) -> None:
        nonlocal sent
        for _ in range(min(count, len(lengths) - sent)):
            length = lengths[sent]
            if length not in infos:
                infos[length] = batcher.inspect(request_args(length))
            waiting.append(Waiting(infos[length], now_s))
            sent += 1

    send(clients)
    returning = calls = real = padded = 0
    while waiting:
        selection = batcher.select(waiting, limits, now_s)
        if not selection.indices:  # the batcher waits: nothing else can arrive meanwhile
            if selection.wake_at_s is None or selection.wake_at_s <= now_s:
                raise ConfigurationError(
                    f"{type(batcher).__name__}.select chose nothing from {len(waiting)} "
                    "waiting requests with no later time to ask again"
                )
            now_s = selection.wake_at_s
            continue
        chosen = set(selection.indices)
        batch = [waiting[i].info for i in sorted(chosen)]
        waiting = [w for i, w in enumerate(waiting) if i not in chosen]
        send(returning)  # the previous batch's clients: they arrive while this one runs
        rows = sum(info.rows for info in batch)
        longest = max(info.length for info in batch)
        now_s += cost.seconds(rows, longest)
        calls += 1
        real += sum(info.rows * info.length for info in batch)
        padded += rows * longest
        returning = len(batch)
        if not waiting:
            send(returning)
            returning = 0
    return SimulatedRun(len(lengths), clients, now_s, calls, real / padded if padded else 1.0)


def simulate_offline(lengths: Sequence[int], batch_size: int, cost: CostModel) -> SimulatedRun:
    """The offline ceiling in simulated time: ``lengths`` sorted, in batches of ``batch_size``."""
    if batch_size < 1:
        raise ConfigurationError(f"batch_size must be >= 1, got {batch_size!r}")
    ordered = sorted(lengths)
    seconds = 0.0
    padded = 0
    chunks = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    for chunk in chunks:
        seconds += cost.seconds(len(chunk), chunk[-1])
        padded += len(chunk) * chunk[-1]
    return SimulatedRun(len(ordered), 0, seconds, len(chunks),
                        sum(ordered) / padded if padded else 1.0)
