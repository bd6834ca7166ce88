"""One lifecycle for every host: the same start, stop, running, broken and ``with`` rules.

Each test runs over every host type: ModelHost, aio.ModelHost, RemoteModelHost
(serving, and as a client of another host), AsyncRemoteModelHost and
GenerationHost. Requests go through each host's own thread-side call (the
asyncio fronts' awaitables are exercised in the ``async with`` test).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from batch_inference import ModelHost
from batch_inference import aio as bi_aio
from batch_inference.batcher.concat_batcher import ConcatBatcher
from batch_inference.errors import (
    ConfigurationError,
    HostAlreadyRunningError,
    HostBrokenError,
    HostNotRunningError,
    HostStoppedError,
)
from batch_inference.generation import GenerationHost
from batch_inference.remote import AsyncRemoteModelHost, RemoteModelHost

WAIT_S = 30.0
VOCAB = 16
_PORTS = itertools.count(30000 + os.getpid() % 10000)


class Fatal(BaseException):
    """What a model raises to break its host (a ``BaseException``, like ``KeyboardInterrupt``)."""


class Gate:
    """Once armed, the next model call sets ``entered`` and waits for ``release``."""

    def __init__(self) -> None:
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def pass_through(self) -> None:
        if self.armed:
            self.armed = False
            self.entered.set()
            if not self.release.wait(WAIT_S):
                raise TimeoutError("the test never released the gate")


class Doubling:
    """``x * 2``; a negative input raises :class:`Fatal`."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x < 0).any()):
            raise Fatal("a negative input")
        self.gate.pass_through()
        return x * 2


class LastTokens:
    """A running batch that holds each row's last token."""

    def __init__(self, last: Sequence[int]) -> None:
        self.last = list(last)

    def __len__(self) -> int:
        return len(self.last)

    def filter(self, rows: Sequence[int]) -> LastTokens:
        return LastTokens([self.last[i] for i in rows])

    @classmethod
    def concatenate(cls, batches: Sequence[LastTokens]) -> LastTokens:
        return cls([token for batch in batches for token in batch.last])


class Counting:
    """A step-wise model whose next token is the last one plus 1 (mod ``VOCAB``).

    Fed the token 0 by a step (the prompt ``[VOCAB - 1]``), it raises :class:`Fatal`;
    so does a prefill of the prompt ``[0]``.
    """

    max_positions = None
    vocab_size = VOCAB

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def prefill(self, prompts: Sequence[Sequence[int]]) -> tuple[LastTokens, np.ndarray]:
        if any(list(prompt) == [0] for prompt in prompts):
            raise Fatal("a prefill of the prompt [0]")
        batch = LastTokens([prompt[-1] for prompt in prompts])
        return batch, _logits(batch)

    def step(self, batch: LastTokens, tokens: Sequence[int]) -> tuple[LastTokens, np.ndarray]:
        if 0 in tokens:
            raise Fatal("a step fed the token 0")
        self.gate.pass_through()
        batch = LastTokens(tokens)
        return batch, _logits(batch)


def _logits(batch: LastTokens) -> np.ndarray:
    logits = np.zeros((len(batch), VOCAB), dtype=np.float32)
    logits[np.arange(len(batch)), [(t + 1) % VOCAB for t in batch.last]] = 1.0
    return logits


# ------------------------------------------------------------------ one adapter per host type
@dataclass
class Kind:
    """How a test drives one host type."""

    name: str
    make: Callable[[Gate, int], Any]
    asyncio_front: bool = False
    generation: bool = False
    client: bool = False  # a RemoteModelHost connected to another host that serves
    #: Whether a request running when stop(cancel_pending=True) is called still finishes
    #: (a generation host stops it at the next step; a client stops waiting for it).
    running_request_finishes: bool = True
    made: list[Any] = field(default_factory=list)

    def thread_host(self, host: Any) -> Any:
        if isinstance(host, bi_aio.ModelHost):
            return host.host
        if isinstance(host, AsyncRemoteModelHost):
            return host.sync_host
        return host

    def start(self, host: Any) -> Any:
        return asyncio.run(host.start()) if self.asyncio_front else host.start()

    def stop(self, host: Any, cancel_pending: bool = False, timeout: float | None = None) -> bool:
        if self.asyncio_front:
            return asyncio.run(host.stop(cancel_pending, timeout))
        return host.stop(cancel_pending, timeout)

    def submit(self, host: Any, value: int) -> Any:
        """A request whose ``.result(timeout)`` is its outcome."""
        if self.generation:
            return host.stream([value], 3)
        return self.thread_host(host).submit(torch.full((1, 1), float(value)))

    def call(self, host: Any, value: int) -> Any:
        return self.outcome(self.submit(host, value))

    def outcome(self, request: Any) -> Any:
        result = request.result(WAIT_S)
        return result if self.generation else int(result[0, 0])

    def expected(self, value: int) -> Any:
        return [(value + i) % VOCAB for i in (1, 2, 3)] if self.generation else 2 * value

    def completed(self, host: Any) -> int | None:
        """Requests completed, counted across starts (``None``: a client keeps no stats)."""
        if self.client:
            return None
        inner = self.thread_host(host)
        if isinstance(inner, RemoteModelHost):
            inner = inner.local_host
        return inner.stats().completed


def _remote(cls: Any) -> Callable[[Gate, int], Any]:
    def make(gate: Gate, port: int) -> Any:
        return cls(Doubling, port, ConcatBatcher(tensor="pt"), wait_ms=0)(gate)
    return make


KINDS = [
    Kind("ModelHost", lambda gate, port: ModelHost(model_obj=Doubling(gate))),
    Kind("aio.ModelHost", lambda gate, port: bi_aio.ModelHost(model_obj=Doubling(gate), wait_ms=0),
         asyncio_front=True),
    Kind("RemoteModelHost", _remote(RemoteModelHost)),
    Kind("RemoteModelHost client", _remote(RemoteModelHost), client=True,
         running_request_finishes=False),
    Kind("AsyncRemoteModelHost", _remote(AsyncRemoteModelHost), asyncio_front=True),
    Kind("GenerationHost", lambda gate, port: GenerationHost(Counting(gate), max_batch_size=4),
         generation=True, running_request_finishes=False),
]


@dataclass
class Setup:
    kind: Kind
    gate: Gate
    port: int
    servers: list[RemoteModelHost]

    def host(self) -> Any:
        """A new, stopped host of this kind (a client kind gets a server to connect to)."""
        if self.kind.client and not self.servers:
            self.serve()
        host = self.kind.make(self.gate, self.port)
        self.kind.made.append(host)
        return host

    def serve(self) -> RemoteModelHost:
        server = _remote(RemoteModelHost)(self.gate, self.port).start()
        assert server.is_server
        self.servers.append(server)
        return server


@pytest.fixture(params=KINDS, ids=lambda kind: kind.name)
def setup(request: pytest.FixtureRequest, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    monkeypatch.setenv("BATCH_INFERENCE_RUNTIME_DIR", str(tmp_path / "rt"))
    kind: Kind = request.param
    kind.made = []
    made = Setup(kind, Gate(), next(_PORTS), [])
    yield made
    made.gate.release.set()
    for host in kind.made:
        kind.stop(host, cancel_pending=True, timeout=10)
    for server in made.servers:
        server.stop(cancel_pending=True, timeout=10)


# ------------------------------------------------------------------ the rules
def test_start_twice_is_refused_and_a_stopped_host_starts_again(setup: Setup) -> None:
    kind = setup.kind
    host = setup.host()
    assert not host.running and not host.broken
    assert kind.start(host) is host
    with pytest.raises(HostAlreadyRunningError, match="already running") as raised:
        kind.start(host)
    assert isinstance(raised.value, RuntimeError)  # what batch-inference 1.0 raises
    assert host.running and not host.broken
    assert kind.call(host, 3) == kind.expected(3)
    assert kind.stop(host) is True
    assert kind.stop(host) is True  # a stopped host: True at once
    assert not host.running and not host.broken
    with pytest.raises(HostNotRunningError):
        kind.call(host, 3)
    kind.start(host)
    assert kind.call(host, 4) == kind.expected(4)
    assert kind.completed(host) == (None if kind.client else 2)  # counted across starts
    assert kind.stop(host, timeout=WAIT_S) is True


def test_context_managers_start_and_drain(setup: Setup) -> None:
    kind = setup.kind
    host = setup.host()
    if not kind.asyncio_front:
        with host as entered:
            assert entered is host and host.running
            assert kind.call(host, 5) == kind.expected(5)
        assert not host.running

    async def main() -> Any:
        async with host as entered:
            assert entered is host and host.running
            if kind.generation:
                return await host.generate_async([5], 3, timeout=WAIT_S)
            if kind.asyncio_front:
                return int((await host.predict(torch.full((1, 1), 5.0), timeout=WAIT_S))[0, 0])
            return await asyncio.get_running_loop().run_in_executor(None, kind.call, host, 5)

    assert asyncio.run(main()) == kind.expected(5)
    assert not host.running and not host.broken
    with pytest.raises(HostNotRunningError):
        kind.call(host, 5)


def test_stop_cancel_pending_fails_what_has_not_started(setup: Setup) -> None:
    kind = setup.kind
    host = kind.start(setup.host())
    setup.gate.armed = True
    first = kind.submit(host, 1)
    assert setup.gate.entered.wait(WAIT_S)  # the model is busy with the first request
    queued = kind.submit(host, 2)
    stopped: list[bool] = []
    stopper = threading.Thread(target=lambda: stopped.append(kind.stop(host, cancel_pending=True)))
    stopper.start()
    with pytest.raises(HostStoppedError):
        queued.result(WAIT_S)
    setup.gate.release.set()
    stopper.join(WAIT_S)
    assert stopped == [True]
    if kind.running_request_finishes:
        assert kind.outcome(first) == kind.expected(1)
    else:
        with pytest.raises(HostStoppedError):
            first.result(WAIT_S)
    assert not host.running and not host.broken


def test_a_broken_host_is_not_running_stays_broken_after_stop_and_starts_again(
        setup: Setup, wait_until: Callable[..., None]) -> None:
    kind = setup.kind
    host = kind.start(setup.host())
    if kind.client:  # a client breaks when it loses its server
        setup.servers[0].stop(timeout=WAIT_S)
        wait_until(lambda: host.broken, WAIT_S)  # its I/O thread learns of it
    else:
        with pytest.raises(HostBrokenError):
            kind.call(host, VOCAB - 1 if kind.generation else -1)
        assert host.broken
    assert not host.running
    with pytest.raises(HostBrokenError):  # (a client's RemoteHostLostError is one)
        kind.call(host, 2)
    with pytest.raises(HostAlreadyRunningError, match="is broken; stop"):
        kind.start(host)
    assert kind.stop(host, timeout=WAIT_S) is True
    assert host.broken and not host.running  # until the next start
    if kind.client:
        setup.serve()  # a new server on the port
    kind.start(host)
    assert host.running and not host.broken
    assert kind.call(host, 2) == kind.expected(2)
    assert kind.stop(host, timeout=WAIT_S) is True


def test_stop_refuses_a_bad_timeout_naming_it(setup: Setup) -> None:
    host = setup.kind.start(setup.host())
    with pytest.raises(ConfigurationError, match="timeout .* got -1"):
        setup.kind.stop(host, timeout=-1)
    assert host.running


def test_a_base_exception_in_prefill_reaches_the_requests_being_prefilled() -> None:
    host = GenerationHost(Counting(Gate()), max_batch_size=4).start()
    try:
        with pytest.raises(HostBrokenError):
            host.stream([0], 3).result(2.0)  # answered at once when it works: short bound
    finally:
        host.stop(cancel_pending=True, timeout=10)
