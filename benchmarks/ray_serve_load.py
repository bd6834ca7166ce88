"""Closed-loop load on Serve handles, and the batch figures of a deployment's replicas.

Used by :mod:`benchmarks.ray_serve_bench` inside the page's namespace.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Load", "closed_loop", "replica_figures", "figures_between"]

#: Most calls made to find every replica of a deployment (each call reaches one replica).
_FIND_CALLS = 64


@dataclass
class Load:
    """One closed-loop run: what each item got back, and how long each took."""

    elapsed_s: float
    outputs: list[Any]
    latencies_s: list[float]
    errors: list[str] = field(default_factory=list)

    @property
    def answered(self) -> int:
        return len(self.latencies_s)

    @property
    def requests_per_s(self) -> float:
        return self.answered / self.elapsed_s if self.elapsed_s > 0 else 0.0


async def closed_loop(send: Callable[[Any], Awaitable[Any]], items: Sequence[Any], clients: int,
                      time_limit_s: float, keep_outputs: bool = True) -> Load:
    """``clients`` callers, each sending its next item when the last is answered.

    Stops when every item was sent or ``time_limit_s`` has passed, whichever
    comes first; a call that fails is recorded in ``errors`` (its output stays ``None``).
    """
    outputs: list[Any] = [None] * len(items)
    latencies: list[float] = []
    errors: list[str] = []
    cursor = 0
    deadline_s = time.monotonic() + time_limit_s

    async def client() -> None:
        nonlocal cursor
        while cursor < len(items) and time.monotonic() < deadline_s:
            index, cursor = cursor, cursor + 1
            start = time.perf_counter()
            try:
                output = await send(items[index])
            except Exception as error:  # noqa: BLE001 - counted and reported, never hidden
                errors.append(f"{type(error).__name__}: {error}"[:200])
                continue
            latencies.append(time.perf_counter() - start)
            if keep_outputs:
                outputs[index] = output

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return Load(time.perf_counter() - start, outputs, latencies, errors)


async def replica_figures(ask: Callable[[], Awaitable[tuple[str, Any]]], replicas: int
                          ) -> dict[str, dict[str, Any]]:
    """``{replica id: figures}`` of every replica: ``ask()`` reaches any one replica, so it is
    called (at most ``_FIND_CALLS`` times) until ``replicas`` ids have answered."""
    found: dict[str, dict[str, Any]] = {}
    for _ in range(_FIND_CALLS):
        replica, figures = await ask()
        found[replica] = _as_figures(figures)
        if len(found) >= replicas:
            break
    return found


def _as_figures(figures: Any) -> dict[str, Any]:
    if isinstance(figures, dict):
        return figures
    return {"batch_sizes": dict(figures.batch_sizes), "real_tokens": figures.real_tokens,
            "padded_tokens": figures.padded_tokens}


def figures_between(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]
                    ) -> dict[str, float]:
    """Average batch size and padding efficiency of the batches run between two snapshots,
    over all replicas (a replica missing from ``before`` counts from zero)."""
    sizes: collections.Counter[int] = collections.Counter()
    real = padded = 0
    for replica, now in after.items():
        then = before.get(replica, {"batch_sizes": {}, "real_tokens": 0, "padded_tokens": 0})
        sizes.update({int(k): v for k, v in now["batch_sizes"].items()})
        sizes.subtract({int(k): v for k, v in then["batch_sizes"].items()})
        real += now["real_tokens"] - then["real_tokens"]
        padded += now["padded_tokens"] - then["padded_tokens"]
    batches = sum(sizes.values())
    requests = sum(size * count for size, count in sizes.items())
    return {"batches": batches,
            "mean_batch_size": requests / batches if batches else 0.0,
            "padding_efficiency": real / padded if padded else 1.0}
