"""RemoteClient against a scripted server: every reply settles the calls it names, however old."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import zmq

from batch_inference.errors import WireFormatError
from batch_inference.remote import _wire
from batch_inference.remote._client import RemoteClient

WAIT_S = 10.0


class ScriptedServer:
    """A bare ROUTER on ``path``: the test decides what it answers, and when."""

    def __init__(self, path: Path) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVTIMEO, int(WAIT_S * 1000))  # every receive is bounded
        self.socket.bind(f"ipc://{path}")
        self.identity = b""

    def receive(self) -> dict[str, Any]:
        identity, *frames = self.socket.recv_multipart()
        self.identity = identity
        header, _ = _wire.unpack(frames, 1 << 20)
        return header

    def send(self, header: dict[str, Any]) -> None:
        header["v"] = _wire.PROTOCOL_VERSION
        self.socket.send_multipart([self.identity, *_wire.pack(header, [])])

    def close(self) -> None:
        self.socket.close(0)
        self.context.term()


@pytest.fixture
def connected(tmp_path: Path) -> Iterator[tuple[ScriptedServer, RemoteClient]]:
    path = tmp_path / "s.sock"
    server = ScriptedServer(path)
    client = RemoteClient(path, 1 << 20)
    try:
        assert server.receive()["kind"] == "hello"
        server.send({"kind": "welcome", "pid": 1, "max_message_bytes": 1 << 20})
        assert client.wait_connected(WAIT_S)
        yield server, client
    finally:
        client.close(0.0)
        server.close()


def _send_one_message_each(server: ScriptedServer, client: RemoteClient,
                           count: int) -> list[tuple[int, int, Any]]:
    """``count`` calls, each in a message of its own (received before the next call is made).

    Returns ``(seq, request id, future)`` of each.
    """
    sent = []
    for _ in range(count):
        future = client.submit((torch.ones(1),), None)
        header = server.receive()
        assert header["kind"] == "call" and len(header["items"]) == 1
        sent.append((header["seq"], header["items"][0]["id"], future))
    return sent


def _refusal(seq: int, message: str) -> dict[str, Any]:
    return {"kind": "refused", "seq": seq, "error": _wire.error_payload(WireFormatError(message))}


def test_a_refusal_settles_its_calls_however_many_messages_followed(connected) -> None:
    """300 messages in flight, then the server refuses the first: its caller gets the error.

    (A client that remembered only its latest 256 messages left that caller
    waiting until the connection dropped.)
    """
    server, client = connected
    sent = _send_one_message_each(server, client, 300)
    server.send(_refusal(sent[0][0], "the first one"))
    with pytest.raises(WireFormatError, match="the first one"):
        sent[0][2].result(WAIT_S)
    server.send(_refusal(sent[-1][0], "the last one"))
    with pytest.raises(WireFormatError, match="the last one"):
        sent[-1][2].result(WAIT_S)
    assert not any(future.done() for _, _, future in sent[1:-1])
    assert client.pending_count == 298


def test_a_message_is_forgotten_once_its_calls_are_settled(connected) -> None:
    """What the client remembers of sent messages is bounded by the calls still pending."""
    server, client = connected
    sent = _send_one_message_each(server, client, 300)
    assert client.messages_in_flight == 300
    error = _wire.error_payload(WireFormatError("answered"))
    server.send({"kind": "results",
                 "items": [{"id": request_id, "ok": False, "error": error}
                           for _, request_id, _ in sent[:-1]]})
    for _, _, future in sent[:-1]:
        with pytest.raises(WireFormatError, match="answered"):
            future.result(WAIT_S)
    assert client.messages_in_flight == 1
    seq, request_id, last = sent[-1]
    assert last.cancel()
    assert server.receive()["cancel"] == [request_id]  # sent after the client forgot the call
    assert client.messages_in_flight == 0 and client.pending_count == 0
    server.send(_refusal(seq, "too late"))  # refers to nothing any more: settles nothing
    (_, _, after), = _send_one_message_each(server, client, 1)
    assert not after.done() and client.messages_in_flight == 1
