"""A streaming HTTP load client: closed-loop clients reading Server-Sent Events, bounded.

Each of ``clients`` clients posts a completion request with ``"stream": true``
(the OpenAI completions API's shape, see :mod:`benchmarks.completions_app`),
reads its events as they come, and sends the next request once it read
``data: [DONE]``; until ``max_requests`` requests have been sent in all or
``max_duration_s`` has passed, whichever comes first. Each request has its own
``request_timeout_s``, so a run lasts at most ``max_duration_s +
request_timeout_s``. Per request it records the time to the first token, the
time to the last one and the token ids received.

Imports ``httpx`` (the ``docs`` extra) when a run starts.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from batch_inference.errors import ConfigurationError

__all__ = ["SseLoadResult", "StreamError", "StreamedCompletion", "read_events", "sse_load",
           "stream_completion"]


class StreamError(RuntimeError):
    """The server ended a stream with an error event, or without ``[DONE]``."""


@dataclass(frozen=True)
class StreamedCompletion:
    """One streamed request: its tokens and when they came (seconds from sending it)."""

    token_ids: list[int]
    ttft_s: float
    latency_s: float
    finish_reason: str | None

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens after the first, per second after the first (0.0 for one token)."""
        span_s = self.latency_s - self.ttft_s
        return (len(self.token_ids) - 1) / span_s if span_s > 0 else 0.0


@dataclass
class SseLoadResult:
    """What one streaming load run measured.

    Attributes
    ----------
    clients:
        Concurrent closed-loop clients.
    wall_s:
        From the first request sent to the last ``[DONE]`` read.
    completions:
        Every completed request, in the order they ended.
    stopped_by:
        ``"count"`` (``max_requests`` were sent) or ``"time"`` (``max_duration_s`` passed).
    outputs:
        With ``keep_outputs``: the token ids of the first request of each
        payload, indexed like the payloads (``None`` where none was sent).
    """

    clients: int
    wall_s: float
    completions: list[StreamedCompletion]
    stopped_by: str
    outputs: list[Any] = field(default_factory=list, repr=False)

    @property
    def requests(self) -> int:
        return len(self.completions)

    @property
    def tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.completions)

    @property
    def tokens_per_s(self) -> float:
        """Tokens received by all clients together, per second of wall time."""
        return self.tokens / self.wall_s if self.wall_s > 0 else 0.0

    def percentile_s(self, name: str, q: float) -> float:
        """The ``q``-th percentile of ``ttft_s`` or ``latency_s`` over the requests."""
        values = [getattr(c, name) for c in self.completions]
        return float(np.percentile(values, q)) if values else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        """The median request's tokens/s after its first token (what one reader sees)."""
        rates = [c.decode_tokens_per_s for c in self.completions if len(c.token_ids) > 1]
        return float(np.median(rates)) if rates else 0.0


async def read_events(response: Any) -> AsyncIterator[dict[str, Any]]:
    """The JSON payloads of an SSE response's ``data:`` lines, up to ``[DONE]``.

    Raises
    ------
    StreamError
        An ``{"error": ...}`` event, or the stream ended without ``[DONE]``.
    """
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue  # blank separators, comments, other fields
        data = line[len("data:"):].strip()
        if data == "[DONE]":
            return
        event = json.loads(data)
        if "error" in event:
            raise StreamError(f"the server ended the stream with {event['error']!r}")
        yield event
    raise StreamError("the stream ended without data: [DONE]")


async def stream_completion(client: Any, body: dict[str, Any],
                            timeout_s: float = 60.0) -> StreamedCompletion:
    """POST ``body`` with ``"stream": true`` to ``/v1/completions`` and read it to the end."""
    tokens: list[int] = []
    ttft_s, finish = 0.0, None
    begun_s = time.perf_counter()
    async with client.stream("POST", "/v1/completions", json={**body, "stream": True},
                             timeout=timeout_s) as response:
        if response.status_code != 200:
            await response.aread()
            response.raise_for_status()
        async for event in read_events(response):
            choice = event["choices"][0]
            if choice["token_ids"] and not tokens:
                ttft_s = time.perf_counter() - begun_s
            tokens += choice["token_ids"]
            finish = choice["finish_reason"] or finish
    return StreamedCompletion(tokens, ttft_s, time.perf_counter() - begun_s, finish)


async def sse_load(
    client: Any,
    payloads: Sequence[dict[str, Any]],
    clients: int,
    max_requests: int,
    max_duration_s: float,
    request_timeout_s: float = 60.0,
    keep_outputs: bool = False,
) -> SseLoadResult:
    """Stream ``payloads`` (cycling through them) from ``clients`` closed-loop clients.

    ``client`` is an ``httpx.AsyncClient`` whose pool allows ``clients``
    connections. Raises :class:`~batch_inference.errors.ConfigurationError` for
    a bound that is not positive or no payloads, and the first failed request's
    error (the other clients stop first).
    """
    if not payloads:
        raise ConfigurationError("payloads must hold at least one request body, got none")
    for name, value in (("clients", clients), ("max_requests", max_requests),
                        ("max_duration_s", max_duration_s),
                        ("request_timeout_s", request_timeout_s)):
        if isinstance(value, bool) or not value > 0:
            raise ConfigurationError(f"{name} must be > 0, got {value!r}")
    completions: list[StreamedCompletion] = []
    outputs: list[Any] = [None] * len(payloads) if keep_outputs else []
    sent, stopped_by = 0, "count"
    started_s = time.monotonic()
    deadline_s = started_s + max_duration_s

    async def one_client() -> None:
        nonlocal sent, stopped_by
        while sent < max_requests:  # one client runs at a time on the loop: no lock needed
            if time.monotonic() >= deadline_s:
                stopped_by = "time"
                return
            i, sent = sent, sent + 1
            done = await stream_completion(client, payloads[i % len(payloads)],
                                           request_timeout_s)
            completions.append(done)
            if keep_outputs and i < len(payloads):
                outputs[i] = done.token_ids

    try:
        async with asyncio.TaskGroup() as group:  # one failing client cancels the others
            for _ in range(min(clients, max_requests)):
                group.create_task(one_client())
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return SseLoadResult(clients, time.monotonic() - started_s, completions, stopped_by,
                         outputs)
