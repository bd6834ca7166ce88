"""An asyncio HTTP load generator: ``clients`` closed-loop clients, bounded in count and time.

Each client sends one request, waits for its answer, and sends the next,
until ``max_requests`` requests have been sent in all or ``max_duration_s``
has passed, whichever comes first; then every client stops by itself. A
request in flight at the deadline finishes (or fails) within the client's
own ``request_timeout_s``, so a run never lasts longer than
``max_duration_s + request_timeout_s``.

Imports ``httpx`` (the ``docs`` extra) when a run starts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from batch_inference.errors import ConfigurationError

__all__ = ["HttpLoadResult", "http_load"]


@dataclass
class HttpLoadResult:
    """What one load run measured.

    Attributes
    ----------
    requests:
        Requests answered (with a 2xx status).
    wall_s:
        Wall time from the first request sent to the last answer.
    latencies_s:
        Each answered request's latency, in the order the answers came.
    stopped_by:
        ``"count"`` (``max_requests`` were sent) or ``"time"`` (``max_duration_s`` passed).
    outputs:
        With ``keep_outputs``: the JSON answer to the first request of each
        payload, indexed like the payloads (``None`` where none was sent).
    """

    requests: int
    wall_s: float
    latencies_s: np.ndarray
    stopped_by: str
    outputs: list[Any] = field(default_factory=list, repr=False)

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def p50_s(self) -> float:
        return float(np.percentile(self.latencies_s, 50)) if self.latencies_s.size else 0.0

    @property
    def p99_s(self) -> float:
        return float(np.percentile(self.latencies_s, 99)) if self.latencies_s.size else 0.0


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not value > 0:
        raise ConfigurationError(f"{name} must be > 0, got {value!r}")


async def http_load(
    client: Any,
    path: str,
    payloads: Sequence[Any],
    clients: int,
    max_requests: int,
    max_duration_s: float,
    request_timeout_s: float = 30.0,
    keep_outputs: bool = False,
) -> HttpLoadResult:
    """POST ``payloads`` (as JSON, cycling through them) to ``path`` from ``clients`` clients.

    Parameters
    ----------
    client:
        An ``httpx.AsyncClient`` (its base URL or transport says where the
        server is); its connection pool should allow ``clients`` connections.
    path:
        The endpoint, e.g. ``"/embed"``.
    payloads:
        Request bodies; request ``i`` sends ``payloads[i % len(payloads)]``.
    clients:
        Concurrent closed-loop clients.
    max_requests:
        Requests sent in all, at most.
    max_duration_s:
        No request is sent after this many seconds from the start.
    request_timeout_s:
        Each request's own timeout.
    keep_outputs:
        Keep the answer to the first request of each payload.

    Raises
    ------
    ConfigurationError
        A bound or count is not positive, or there are no payloads.
    httpx.HTTPError
        The first failed request (an error status, a timeout, a lost
        connection); the other clients stop before it is raised.
    """
    if not payloads:
        raise ConfigurationError("payloads must hold at least one request body, got none")
    for name, value in (("clients", clients), ("max_requests", max_requests),
                        ("max_duration_s", max_duration_s),
                        ("request_timeout_s", request_timeout_s)):
        _check_positive(name, value)
    latencies: list[float] = []  # grows with the requests sent, whatever max_requests is
    outputs: list[Any] = [None] * len(payloads) if keep_outputs else []
    sent = 0
    stopped_by = "count"
    started_s = time.monotonic()
    deadline_s = started_s + max_duration_s

    async def one_client() -> None:
        nonlocal sent, stopped_by
        while sent < max_requests:  # the event loop runs one client at a time: no lock needed
            if time.monotonic() >= deadline_s:
                stopped_by = "time"
                return
            i, sent = sent, sent + 1
            payload = payloads[i % len(payloads)]
            begun_s = time.perf_counter()
            response = await client.post(path, json=payload, timeout=request_timeout_s)
            response.raise_for_status()
            latencies.append(time.perf_counter() - begun_s)
            if keep_outputs and i < len(payloads):
                outputs[i] = response.json()

    try:
        async with asyncio.TaskGroup() as group:  # one failing client cancels the others
            for _ in range(min(clients, max_requests)):
                group.create_task(one_client())
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    wall_s = time.monotonic() - started_s
    return HttpLoadResult(len(latencies), wall_s, np.asarray(latencies), stopped_by, outputs)
