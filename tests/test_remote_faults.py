"""RemoteModelHost across processes ("spawn"): election, a killed server, a killed client.

Every wait is bounded; the calls themselves carry no timeout, so an outcome
arriving within the bound shows the fault was detected (a missed one would
leave them pending forever).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from _remote_support import Doubler, Gated, client_calls, remote, serve_gated, start_at_once

from batch_inference.errors import RemoteHostLostError

pytestmark = pytest.mark.slow

BOUND_S = 60.0  # a spawned child imports torch: slow on a busy machine, never unbounded
_PORTS = itertools.count(40000 + os.getpid() % 10000)
SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture
def port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv("BATCH_INFERENCE_RUNTIME_DIR", str(tmp_path / "rt"))
    return next(_PORTS)


@pytest.fixture
def spawn() -> Iterator[Callable[..., Any]]:
    """Start a "spawn" child; every child is killed (if alive) and joined at teardown."""
    children: list[Any] = []

    def start(target: Callable[..., None], *args: Any) -> Any:
        child = SPAWN.Process(target=target, args=args, daemon=True)
        child.start()
        children.append(child)
        return child

    yield start
    for child in children:
        if child.is_alive():
            child.kill()
        child.join(10)


def test_processes_started_at_once_elect_exactly_one_server(port: int, spawn) -> None:
    n = 3
    barrier, results, done = SPAWN.Barrier(n), SPAWN.Queue(), SPAWN.Event()
    children = [spawn(start_at_once, port, barrier, results, done) for _ in range(n)]
    reports = [results.get(timeout=BOUND_S) for _ in range(n)]
    done.set()
    servers = [pid for is_server, _, pid in reports if is_server]
    assert len(servers) == 1
    assert all(served_by == servers[0] for _, served_by, _ in reports)
    for child in children:
        child.join(BOUND_S)
        assert child.exitcode == 0


def test_a_killed_server_fails_every_pending_call_in_every_client(
        port: int, spawn, wait_until) -> None:
    entered, release, ready, done = (SPAWN.Event() for _ in range(4))
    server = spawn(serve_gated, port, entered, release, ready, done)
    assert ready.wait(BOUND_S)
    client = remote(Doubler, port).start()
    try:
        assert not client.is_server
        mine = [client.submit(torch.ones(1, 2)) for _ in range(5)]
        assert entered.wait(BOUND_S)  # the server's model holds the first batch
        sent, theirs = SPAWN.Event(), SPAWN.Queue()
        spawn(client_calls, port, 3, sent, theirs)
        assert sent.wait(BOUND_S)

        os.kill(server.pid, signal.SIGKILL)
        for future in mine:
            assert isinstance(future.exception(BOUND_S), RemoteHostLostError)
        assert [theirs.get(timeout=BOUND_S) for _ in range(3)] == [
            ("error", "RemoteHostLostError")] * 3
        with pytest.raises(RemoteHostLostError, match="dropped"):
            client.predict(torch.ones(1, 2))

        # The lock died with the server: a new host takes the port, the old client reaches it.
        with remote(Doubler, port) as successor:
            assert successor.is_server
            wait_until(lambda: client.running, BOUND_S)
            assert torch.equal(client.predict(torch.ones(1, 2), timeout=BOUND_S),
                               torch.full((1, 2), 2.0))
    finally:
        client.stop(timeout=5)


def test_a_frozen_server_is_caught_by_heartbeats(port: int, spawn) -> None:
    """SIGSTOP freezes the whole server process (ZeroMQ's own threads too): no reply comes."""
    entered, release, ready, done = (SPAWN.Event() for _ in range(4))
    server = spawn(serve_gated, port, entered, release, ready, done)
    assert ready.wait(BOUND_S)
    client = remote(Doubler, port).start()
    try:
        pending = client.submit(torch.ones(1, 2))
        assert entered.wait(BOUND_S)
        os.kill(server.pid, signal.SIGSTOP)
        assert isinstance(pending.exception(BOUND_S), RemoteHostLostError)
    finally:
        os.kill(server.pid, signal.SIGKILL)
        client.stop(timeout=5)


def test_a_client_killed_mid_request_leaves_the_server_serving_the_rest(
        port: int, spawn, wait_until) -> None:
    entered, release = SPAWN.Event(), SPAWN.Event()
    server = remote(Gated, port, entered, release).start()
    survivor = remote(Gated, port, entered, release).start()
    try:
        sent, results = SPAWN.Event(), SPAWN.Queue()
        doomed = spawn(client_calls, port, 4, sent, results)
        assert sent.wait(BOUND_S) and entered.wait(BOUND_S)
        wait_until(lambda: server.local_host.stats().requests == 4, BOUND_S)
        mine = survivor.submit(torch.full((1, 2), 5.0))
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.join(BOUND_S)
        release.set()
        assert torch.equal(mine.result(BOUND_S), torch.full((1, 2), 10.0))
        wait_until(lambda: server.local_host.stats().completed == 5, BOUND_S)
        assert survivor.predict(torch.ones(1, 2), timeout=BOUND_S)[0, 0] == 2
    finally:
        release.set()
        survivor.stop(timeout=5)
        server.stop(timeout=5)


def test_gated_model_records_calls() -> None:
    """The support model itself: first call waits for the gate, calls are recorded."""
    import threading

    entered, release = threading.Event(), threading.Event()
    model = Gated(entered, release)
    release.set()
    assert torch.equal(model.predict_batch(torch.ones(2, 1)), torch.full((2, 1), 2.0))
    assert entered.is_set() and len(model.calls) == 1
