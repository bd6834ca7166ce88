"""The serving side of the remote mode: a ZeroMQ ROUTER in front of a local ModelHost.

One I/O thread owns the socket. Each received message is checked and decoded
once; its requests go to the local host through its public ``submit()``; a
done callback queues each outcome, and the I/O thread sends every outcome
ready at its wake-up back in one message per client. The server's own work
therefore grows with messages, while the host batches requests.
"""

from __future__ import annotations

import collections
import os
import threading
import traceback
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import zmq

from ..errors import HostNotRunningError, WireFormatError
from ..host import ModelHost
from . import _wire
from ._wakeup import Wakeup
from ._wire_stats import encode_stats

__all__ = ["RemoteServer"]

_Key = tuple[bytes, int]


class RemoteServer:
    """Serve ``host`` on the Unix socket ``path`` until :meth:`close`.

    Parameters
    ----------
    host:
        A started :class:`~batch_inference.ModelHost`.
    path:
        The socket's path (in the private runtime directory).
    max_message_bytes:
        Larger messages are refused with a
        :class:`~batch_inference.errors.WireFormatError` to their sender alone.
    """

    def __init__(self, host: ModelHost, path: Path, max_message_bytes: int) -> None:
        self.host = host
        self.path = path
        self.max_message_bytes = max_message_bytes
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 1000)
        self._socket.setsockopt(zmq.MAXMSGSIZE, 2 * max_message_bytes)
        # No high-water mark: at one, ROUTER drops replies silently, and a dropped result would
        # leave its caller waiting. Queues stay bounded by the clients' own outstanding calls.
        self._socket.setsockopt(zmq.SNDHWM, 0)
        self._socket.setsockopt(zmq.RCVHWM, 0)
        if path.exists() or path.is_symlink():
            path.unlink()  # a dead server's socket: we hold the lock, so nobody serves it
        self._socket.bind(f"ipc://{path}")
        os.chmod(path, 0o600)
        self._wakeup = Wakeup()
        self._done: collections.deque[tuple[bytes, int, Future[Any]]] = collections.deque()
        self._running: dict[_Key, Future[Any]] = {}
        self._clients: dict[bytes, None] = {}
        self._accepting = True
        self._closing = False
        self.messages_received = 0
        self._thread = threading.Thread(target=self._loop, name="batch-inference-server",
                                        daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ lifecycle
    def refuse_new(self) -> None:
        """Answer later calls with HostNotRunningError (what was accepted still runs)."""
        self._accepting = False

    def close(self, timeout_s: float | None = None) -> None:
        """Send what is done, tell every client ``bye``, and close the socket."""
        self._accepting = False
        self._closing = True
        self._wakeup.set()
        self._thread.join(timeout_s)
        self._wakeup.close()

    # ------------------------------------------------------------------ I/O thread
    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._wakeup.fd, zmq.POLLIN)
        try:
            while True:
                events = dict(poller.poll(1000))
                if self._socket in events:
                    for _ in range(64):  # bounded, so that results are sent in between
                        try:
                            frames = self._socket.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._on_message(frames[0], frames[1:])
                self._wakeup.clear()
                self._send_done()
                if self._closing:
                    break
            for identity in self._clients:
                self._send(identity, {"kind": "bye"}, [])
        finally:
            self._socket.close()
            self._context.term()

    def _send(self, identity: bytes, header: dict[str, Any], buffers: list[Any]) -> None:
        header["v"] = _wire.PROTOCOL_VERSION
        try:
            self._socket.send_multipart([identity, *_wire.pack(header, buffers)],
                                        zmq.NOBLOCK, copy=False)
        except (zmq.Again, zmq.ZMQError):
            pass  # the client is gone or not reading: its results are dropped

    def _on_message(self, identity: bytes, frames: list[bytes]) -> None:
        self.messages_received += 1
        seq: Any = None
        try:
            header, buffers = _wire.unpack(frames, self.max_message_bytes)
            seq = header.get("seq") if type(header.get("seq")) is int else None
            kind = header["kind"]
            if kind == "hello":
                self._clients[identity] = None
                self._send(identity, {"kind": "welcome", "pid": os.getpid(),
                                      "max_message_bytes": self.max_message_bytes}, [])
            elif kind == "call":
                self._clients[identity] = None
                self._on_call(identity, header, buffers)
            elif kind == "stats":  # the host's stats, for a client's RemoteModelHost.stats()
                self._send(identity, {"kind": "stats", "seq": seq,
                                      "stats": encode_stats(self.host.stats())}, [])
            else:
                raise WireFormatError(f"unknown message kind {kind!r}")
        except Exception as error:  # whatever a peer sends, the I/O thread lives on
            if not isinstance(error, WireFormatError):
                error = WireFormatError(f"malformed message ({type(error).__name__}: {error})")
            if seq is None:
                seq = _wire.peek_seq(frames, self.max_message_bytes)
            self._send(identity, {"kind": "refused", "seq": seq,
                                  "error": _wire.error_payload(error)}, [])

    def _on_call(self, identity: bytes, header: dict[str, Any], buffers: list[memoryview]) -> None:
        items, cancels = header.get("items", []), header.get("cancel", [])
        if not isinstance(items, list) or not isinstance(cancels, list):
            raise WireFormatError("'items' and 'cancel' must be lists")
        for request_id in cancels:
            future = self._running.get((identity, request_id)) if type(request_id) is int else None
            if future is not None:
                future.cancel()  # dropped if its batch has not started
        for item in items:
            if not isinstance(item, dict) or type(item.get("id")) is not int:
                raise WireFormatError(f"malformed request item {_wire.short(item)}")
        for item in items:
            self._submit(identity, item, buffers)

    def _submit(self, identity: bytes, item: dict[str, Any], buffers: list[memoryview]) -> None:
        """Decode one request and hand it to the host; any error is that request's alone."""
        request_id: int = item["id"]
        try:
            if not self._accepting:
                raise HostNotRunningError("the serving host is stopping; it accepts no new calls")
            timeout_s = item.get("timeout_s")
            if timeout_s is not None and (type(timeout_s) not in (int, float) or timeout_s < 0):
                raise WireFormatError(f"malformed timeout_s {_wire.short(timeout_s)}")
            base = item.get("b", 0)
            if type(base) is not int or base < 0:
                raise WireFormatError(f"malformed buffer base {_wire.short(base)}")
            args = _wire.decode_value(item.get("args"), buffers, base)
            if not isinstance(args, tuple):
                raise WireFormatError(f"request arguments must be a tuple, got {_wire.short(args)}")
            timeout = None if timeout_s is None else max(float(timeout_s), 1e-6)
            future = self.host.submit(*args, timeout=timeout)
        except Exception as error:
            failed: Future[Any] = Future()
            failed.set_exception(error)
            self._done.append((identity, request_id, failed))
            return
        key = (identity, request_id)
        self._running[key] = future
        future.add_done_callback(lambda f: self._on_done(key, f))

    def _on_done(self, key: _Key, future: Future[Any]) -> None:
        # Runs on a worker thread of the host: queue, wake the I/O thread.
        self._running.pop(key, None)
        self._done.append((key[0], key[1], future))
        self._wakeup.set()

    def _send_done(self) -> None:
        by_client: dict[bytes, list[tuple[dict[str, Any], _wire.Encoded | None]]] = {}
        done = self._done
        while done:
            identity, request_id, future = done.popleft()
            if future.cancelled():
                continue  # the client gave up on it
            by_client.setdefault(identity, []).append(_outcome(request_id, future))
        for identity, outcomes in by_client.items():
            for header, buffers in _messages(outcomes, self.max_message_bytes):
                self._send(identity, header, buffers)


def _outcome(request_id: int, future: Future[Any]) -> tuple[dict[str, Any], _wire.Encoded | None]:
    error = future.exception()
    if error is None:
        try:
            encoded = _wire.encode_value(future.result())
            return {"id": request_id, "ok": True, "value": encoded.tree}, encoded
        except Exception as encode_error:
            error = encode_error if isinstance(encode_error, WireFormatError) else \
                WireFormatError(f"the result cannot be encoded: {encode_error!r}")
    text = "".join(traceback.format_exception(error))
    return {"id": request_id, "ok": False, "error": _wire.error_payload(error, text)}, None


def _messages(outcomes: list[tuple[dict[str, Any], _wire.Encoded | None]],
              max_bytes: int) -> Iterator[tuple[dict[str, Any], list[Any]]]:
    """Group outcomes into ``results`` messages of at most ``max_bytes`` of buffers."""
    items: list[dict[str, Any]] = []
    buffers: list[Any] = []
    size = 0
    for item, encoded in outcomes:
        nbytes = encoded.nbytes if encoded is not None else 0
        if nbytes > max_bytes // 2:
            item = {"id": item["id"], "ok": False, "error": _wire.error_payload(WireFormatError(
                f"the result of {nbytes} bytes exceeds max_message_bytes={max_bytes}"))}
            encoded, nbytes = None, 0
        if items and size + nbytes > max_bytes // 2:
            yield {"kind": "results", "items": items}, buffers
            items, buffers, size = [], [], 0
        if encoded is not None:
            item["b"] = len(buffers)
            buffers.extend(encoded.buffers)
        items.append(item)
        size += nbytes
    if items:
        yield {"kind": "results", "items": items}, buffers
