"""RemoteModelHost within one process: election, calls, typed errors, timeouts, stop, refusals."""

from __future__ import annotations

import asyncio
import itertools
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import zmq
from _remote_support import Doubler, Gated, remote

from batch_inference.errors import (
    ConfigurationError,
    HostNotRunningError,
    HostStoppedError,
    InvalidRequestError,
    QueueFullError,
    RemoteHostLostError,
    RemoteModelError,
    RequestTimeoutError,
    WireFormatError,
)
from batch_inference.remote import AsyncRemoteModelHost, RemoteModelHost, _wire, remote_batching
from batch_inference.remote._election import ServerLock, runtime_dir, socket_path

_PORTS = itertools.count(20000 + os.getpid() % 10000)


@pytest.fixture
def port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv("BATCH_INFERENCE_RUNTIME_DIR", str(tmp_path / "rt"))
    return next(_PORTS)


@pytest.fixture
def hosts() -> Iterator[Callable[[RemoteModelHost], RemoteModelHost]]:
    """Start hosts; stop clients first, then servers, at teardown."""
    made: list[RemoteModelHost] = []

    def start(host: RemoteModelHost) -> RemoteModelHost:
        made.append(host)
        return host.start()

    yield start
    for host in sorted(made, key=lambda h: h.is_server):
        host.stop(timeout=5)


# ------------------------------------------------------------------ directory and lock
def test_runtime_dir_is_private_and_a_shared_one_is_refused(port: int) -> None:
    path = runtime_dir()
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o700
    os.chmod(path, 0o755)
    with pytest.raises(ConfigurationError, match="mode 755"):
        runtime_dir()
    os.chmod(path, 0o700)


def test_a_linked_runtime_dir_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.setenv("BATCH_INFERENCE_RUNTIME_DIR", str(tmp_path / "link"))
    with pytest.raises(ConfigurationError, match="not a directory"):
        runtime_dir()


def test_a_socket_path_too_long_for_the_kernel_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_INFERENCE_RUNTIME_DIR", str(tmp_path / ("d" * 100)))
    with pytest.raises(ConfigurationError, match="longer than 107 bytes"):
        socket_path(7000)


def test_the_lock_is_exclusive_within_one_process(port: int) -> None:
    first, second = ServerLock(port), ServerLock(port)
    assert first.try_acquire() and not second.try_acquire()
    first.release()
    assert second.try_acquire()
    second.release()


@pytest.mark.parametrize("bad", [0, 70000, "80", True])
def test_a_bad_port_is_refused_by_value(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match=repr(bad)):
        RemoteModelHost(Doubler, bad)


@pytest.mark.parametrize(("options", "message"), [
    ({"max_message_bytes": 0}, r"max_message_bytes .* got 0"),
    ({"connect_timeout_s": 0}, r"connect_timeout_s .* got 0"),
    ({"connect_timeout_s": "5"}, r"connect_timeout_s .* got '5'"),
    ({"max_batch_size": -2}, r"max_batch_size .* got -2"),
    ({"default_timeout_s": -1}, r"default_timeout_s .* got -1"),
])
def test_bad_settings_are_refused_by_value(port: int, options: dict, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        RemoteModelHost(Doubler, port, **options)
    with pytest.raises(ConfigurationError, match=message):
        remote_batching(port, **options)(Doubler)


def test_settings_are_checked_once_and_shared_by_the_hosts_a_decorator_makes(port: int) -> None:
    @remote_batching(port, max_batch_size=8, max_delay_s=0.001)
    class Model(Doubler):
        pass

    first, second = Model.host(), Model.host()
    assert first.settings is second.settings
    assert first.settings.host.max_delay_s == 0.001  # an explicit max_delay_s beats 1.0's wait_ms
    assert first.local_host.settings is first.settings.host
    assert (first.grpc_port, first.local_host.max_batch_size) == (port, 8)


# ------------------------------------------------------------------ calls
def test_one_of_several_hosts_on_a_port_serves_and_all_get_results(port: int, hosts) -> None:
    started = [hosts(remote(Doubler, port)) for _ in range(3)]
    assert [h.is_server for h in started].count(True) == 1
    for host in started:
        assert torch.equal(host.predict(torch.ones(1, 3)), torch.full((1, 3), 2.0))
    assert socket_path(port).exists()
    assert stat.S_IMODE(os.stat(socket_path(port)).st_mode) == 0o600


def test_values_of_every_supported_kind_cross(port: int, hosts) -> None:
    class Echo:
        def predict_batch(self, x: list[Any]) -> list[Any]:
            return x

    from batch_inference.batcher.base import Batcher

    class ListBatcher(Batcher):
        def batch(self, requests):  # type: ignore[no-untyped-def]
            return [[r[0] for r in requests]], len(requests)

        def unbatch(self, outputs, context):  # type: ignore[no-untyped-def]
            return outputs

    server = hosts(RemoteModelHost(Echo, port, ListBatcher(), wait_ms=0))
    client = hosts(RemoteModelHost(Echo, port, ListBatcher(), wait_ms=0))
    assert server.is_server and not client.is_server
    value = {"t": torch.arange(3), "a": (1, 2.5, None, True), "s": ["x", b"\x00y"]}
    back = client.predict(value)
    assert torch.equal(back["t"], value["t"]) and back["a"] == value["a"]
    assert back["s"] == value["s"]
    with pytest.raises(WireFormatError, match="object"):
        client.predict(object())


def test_the_models_exception_arrives_as_remote_model_error(port: int, hosts) -> None:
    hosts(remote(Doubler, port))
    client = hosts(remote(Doubler, port))
    with pytest.raises(RemoteModelError, match="ValueError: negative input -1") as info:
        client.predict(-torch.ones(1, 2))
    assert info.value.remote_type == "ValueError"
    assert "predict_batch" in info.value.remote_traceback
    assert torch.equal(client.predict(torch.ones(1, 2)), torch.full((1, 2), 2.0))


def test_library_errors_keep_their_class(port: int, hosts) -> None:
    hosts(remote(Doubler, port))
    client = hosts(remote(Doubler, port))
    with pytest.raises(InvalidRequestError, match="takes 1 arguments, got 2"):
        client.predict(torch.ones(1, 2), torch.ones(1, 2))


def test_queue_full_crosses_as_queue_full(port: int, hosts, wait_until) -> None:
    entered, release = threading.Event(), threading.Event()
    server = hosts(remote(Gated, port, entered, release, max_queue_size=1))
    client = hosts(remote(Gated, port, entered, release))
    try:
        first = client.submit(torch.ones(1, 1))
        assert entered.wait(10)
        second = client.submit(torch.ones(1, 1))
        wait_until(lambda: server.local_host.stats().queue_depth == 1)
        with pytest.raises(QueueFullError):
            client.predict(torch.ones(1, 1), timeout=10)
    finally:
        release.set()
    assert first.result(10)[0, 0] == 2 and second.result(10)[0, 0] == 2


def test_a_timed_out_call_is_dropped_on_the_server(port: int, hosts, wait_until) -> None:
    entered, release = threading.Event(), threading.Event()
    server = hosts(remote(Gated, port, entered, release))
    client = hosts(remote(Gated, port, entered, release))
    blocker = client.submit(torch.ones(1, 1))
    assert entered.wait(10)
    with pytest.raises(RequestTimeoutError):
        client.predict(torch.full((1, 1), 7.0), timeout=0.5)
    cancelled = client.submit(torch.full((1, 1), 8.0))
    wait_until(lambda: server.local_host.stats().requests == 3)  # both reached the server
    assert cancelled.cancel()
    wait_until(lambda: server.local_host.stats().queue_depth == 0)  # both were dropped
    release.set()
    assert blocker.result(10)[0, 0] == 2
    assert torch.equal(client.predict(torch.full((1, 1), 3.0), timeout=10), torch.full((1, 1), 6.0))
    model = server.local_host.models[0]
    ran = {float(v) for call in model.calls for v in call.flatten()}
    assert 7.0 not in ran and 8.0 not in ran and 3.0 in ran


def test_requests_that_gather_cross_in_one_message(
        port: int, hosts, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the I/O thread is not woken (as while a message is in flight), requests gather;
    one wake-up sends them all in one message, and the server answers them in few."""
    server = hosts(remote(Doubler, port, max_batch_size=64))
    client = hosts(remote(Doubler, port))
    assert server._server is not None and client._client is not None
    before, answers_before = server._server.messages_received, client._client.messages_received
    wakeup = client._client._wakeup
    real_set = wakeup.set
    monkeypatch.setattr(wakeup, "set", lambda: None)
    futures = [client.submit(torch.full((1, 1), float(i))) for i in range(200)]
    monkeypatch.setattr(wakeup, "set", real_set)
    real_set()
    for i, future in enumerate(futures):
        assert future.result(10)[0, 0] == 2 * i
    # One message; one more if the I/O thread was still ending the loop turn that took the
    # welcome, one more if its idle poll (1 s) ended while they gathered. Never one each.
    assert server._server.messages_received - before <= 3
    # Results travel per batch (at most 64 each here), not one message per request.
    assert client._client.messages_received - answers_before <= 50


def test_stopping_the_server_drains_then_clients_fail_typed(port: int, hosts, wait_until) -> None:
    entered, release = threading.Event(), threading.Event()
    server = remote(Gated, port, entered, release).start()
    client = hosts(remote(Gated, port, entered, release))
    accepted = client.submit(torch.ones(1, 1))
    assert entered.wait(10)
    stopper = threading.Thread(target=server.stop, kwargs={"timeout": 10})
    stopper.start()
    release.set()
    stopper.join(10)
    assert not stopper.is_alive()
    assert accepted.result(10)[0, 0] == 2  # drained: it was accepted before stop
    wait_until(lambda: not client.running)
    with pytest.raises(RemoteHostLostError, match="the server stopped"):
        client.predict(torch.ones(1, 1))
    # A new server on the port: the old client reaches it.
    hosts(remote(Doubler, port))
    wait_until(lambda: client.running)
    assert client.predict(torch.ones(1, 1), timeout=10)[0, 0] == 2


def test_stopping_a_client_waits_for_its_calls_then_fails_the_rest(port: int, hosts) -> None:
    entered, release = threading.Event(), threading.Event()
    hosts(remote(Gated, port, entered, release))
    client = remote(Gated, port, entered, release).start()
    held = client.submit(torch.ones(1, 1))
    assert entered.wait(10)
    assert client.stop(timeout=0.2) is False  # the gate holds its call
    with pytest.raises(HostStoppedError):
        held.result(10)
    release.set()
    again = remote(Gated, port, entered, release).start()
    assert again.predict(torch.ones(1, 1), timeout=10)[0, 0] == 2
    assert again.stop(timeout=10) is True


def test_calls_before_start_and_after_stop_are_refused(port: int) -> None:
    host = remote(Doubler, port)
    with pytest.raises(HostNotRunningError):
        host.predict(torch.ones(1, 1))
    with host:
        assert host.is_server
    with pytest.raises(HostNotRunningError):
        host.predict(torch.ones(1, 1))


def _raw_dealer(port: int) -> tuple[zmq.Context, zmq.Socket]:
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.connect(f"ipc://{socket_path(port)}")
    return context, sock


@pytest.mark.parametrize("frames", [
    [b"\xff not json"],
    [b'{"kind": "call", "v": 1, "seq": 4, "items": 3}'],
    [b'{"kind": "launch", "v": 1}'],
    [b'{"kind": "call", "v": 1, "seq": 5, "items": []}', b"x" * 5000],
    [b"[" * 3000],  # nested too deep for the JSON parser
    [b'{"kind": "call", "v": 1, "seq": 6, "items": [{"id": 1, "args": {"T": []}}], "z": 1}'],
])
def test_a_malformed_or_oversized_message_is_refused_to_its_sender_alone(
        port: int, hosts, frames: list[bytes]) -> None:
    hosts(remote(Doubler, port, max_message_bytes=4096))
    client = hosts(remote(Doubler, port))
    context, sock = _raw_dealer(port)
    try:
        sock.send_multipart(frames)
        header, _ = _wire.unpack(sock.recv_multipart(), 1 << 20)
        assert header["kind"] == "refused"
        assert header["error"]["type"] == "WireFormatError"
        seq = _wire.peek_seq(frames, 1 << 20)
        assert header["seq"] == seq
    finally:
        sock.close()
        context.term()
    assert client.predict(torch.ones(1, 1), timeout=10)[0, 0] == 2


def test_a_message_over_twice_the_limit_leaves_other_clients_served(port: int, hosts) -> None:
    """ZeroMQ drops such a sender unread (MAXMSGSIZE); the server serves everyone else."""
    hosts(remote(Doubler, port, max_message_bytes=4096))
    client = hosts(remote(Doubler, port))
    context, sock = _raw_dealer(port)
    try:
        sock.send_multipart([b'{"kind": "call", "v": 1, "seq": 1, "items": []}', b"x" * 20_000])
        assert client.predict(torch.ones(1, 1), timeout=10)[0, 0] == 2
    finally:
        sock.close()
        context.term()
    assert client.predict(torch.ones(1, 1), timeout=10)[0, 0] == 2


def test_a_malformed_request_item_fails_that_request_alone(port: int, hosts) -> None:
    hosts(remote(Doubler, port))
    context, sock = _raw_dealer(port)
    good = _wire.encode_value((torch.ones(1, 1),))
    items = [{"id": 1, "args": {"N": 9, "d": "float32", "s": [1]}},
             {"id": 2, "args": good.tree, "b": 0}]
    try:
        sock.send_multipart(_wire.pack({"kind": "call", "v": 1, "seq": 0, "items": items},
                                       good.buffers))
        outcomes: dict[int, Any] = {}
        while len(outcomes) < 2:
            header, _ = _wire.unpack(sock.recv_multipart(), 1 << 20)
            outcomes.update({item["id"]: item for item in header["items"]})
    finally:
        sock.close()
        context.term()
    assert outcomes[1]["ok"] is False and outcomes[1]["error"]["type"] == "WireFormatError"
    assert outcomes[2]["ok"] is True


def test_the_decorator_and_the_asyncio_twin(port: int) -> None:
    @remote_batching(grpc_port=port, max_batch_size=8)
    class Scaled:
        def __init__(self, factor: float) -> None:
            self.factor = factor

        def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.factor

    with pytest.raises(ConfigurationError, match="max_batch_size"):
        remote_batching(grpc_port=port, max_batch_size=0)(Scaled)

    async def main() -> None:
        server = Scaled.host(3.0)
        assert isinstance(server, RemoteModelHost)
        with server:
            async with AsyncRemoteModelHost(Scaled, port)(3.0) as client:
                assert server.is_server and not client.is_server
                out = await asyncio.gather(*(client.predict(torch.ones(1, 1)) for _ in range(20)))
                assert all(float(o[0, 0]) == 3.0 for o in out)
                with pytest.raises(RequestTimeoutError):
                    await client.predict(torch.ones(1, 1), timeout=1e-9)

    asyncio.run(asyncio.wait_for(main(), 30))


def test_cancelling_an_asyncio_caller_drops_its_request_on_the_server(
        port: int, hosts, wait_until) -> None:
    entered, release = threading.Event(), threading.Event()
    server = hosts(remote(Gated, port, entered, release))

    async def main() -> None:
        client = AsyncRemoteModelHost(Gated, port, wait_ms=0)(entered, release)
        async with client:
            blocker = asyncio.ensure_future(client.predict(torch.ones(1, 1)))
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(None, entered.wait, 10)
            doomed = asyncio.ensure_future(client.predict(torch.full((1, 1), 8.0)))
            await loop.run_in_executor(
                None, wait_until, lambda: server.local_host.stats().requests == 2)
            doomed.cancel()
            await loop.run_in_executor(
                None, wait_until, lambda: server.local_host.stats().queue_depth == 0)
            release.set()
            assert float((await asyncio.wait_for(blocker, 10))[0, 0]) == 2.0
            with pytest.raises(asyncio.CancelledError):
                await doomed

    asyncio.run(asyncio.wait_for(main(), 30))
    ran = {float(v) for call in server.local_host.models[0].calls for v in call.flatten()}
    assert 8.0 not in ran


def test_without_pyzmq_the_package_imports_and_a_host_says_what_is_missing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    code = "import sys; sys.modules['zmq'] = None; import batch_inference.remote"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    monkeypatch.setitem(sys.modules, "zmq", None)
    with pytest.raises(ConfigurationError, match=r"pyzmq: pip install 'batch_inference\[remote\]'"):
        RemoteModelHost(Doubler, 5000)
