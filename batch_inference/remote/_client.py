"""The connecting side of the remote mode: a ZeroMQ DEALER that batches its callers' requests.

Callers encode their arguments in their own thread (so a value that cannot
cross fails at the call), queue them and wake the I/O thread. At each wake-up
the I/O thread sends everything that gathered in one message, so while one
message is in flight the next one gathers. A socket monitor reports the
server's connection dropping (its process died or stopped) at once: every
pending call then fails with :class:`~batch_inference.errors.RemoteHostLostError`.
ZeroMQ keeps reconnecting; when a new server answers the ``hello``, calls go
through again.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from .._future import LightFuture, settle
from ..errors import (
    HostNotRunningError,
    HostStoppedError,
    RemoteHostLostError,
    RequestTimeoutError,
    WireFormatError,
)
from ..stats import HostStats
from . import _wire
from ._inflight import InFlight
from ._wakeup import Wakeup
from ._wire_stats import decode_stats

__all__ = ["RemoteClient"]

_Outgoing = tuple[int, float | None, _wire.Encoded]


class RemoteClient:
    """Send requests to the server on ``path``: :meth:`submit` (a Future) or :meth:`send`.

    Parameters
    ----------
    path:
        The server's Unix socket.
    max_message_bytes:
        Largest message sent (lowered to the server's own limit when it answers).
    heartbeat_s:
        ZeroMQ heartbeat interval; a server silent for three of them counts as gone.
    """

    def __init__(self, path: Path, max_message_bytes: int, heartbeat_s: float = 1.0) -> None:
        self.path = path
        self.max_message_bytes = max_message_bytes
        self.server_pid: int | None = None
        self.messages_sent = 0
        self.messages_received = 0
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.MAXMSGSIZE, 2 * max_message_bytes)
        self._socket.setsockopt(zmq.SNDHWM, 0)  # never refuse or drop a call for queue length
        self._socket.setsockopt(zmq.RCVHWM, 0)
        self._socket.setsockopt(zmq.HEARTBEAT_IVL, int(heartbeat_s * 1000))
        self._socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(3 * heartbeat_s * 1000))
        self._socket.setsockopt(zmq.RECONNECT_IVL, 50)
        self._monitor = self._socket.get_monitor_socket(
            zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        self._socket.connect(f"ipc://{path}")
        self._wakeup = Wakeup()
        self._outgoing: collections.deque[_Outgoing] = collections.deque()
        self._cancels: collections.deque[int] = collections.deque()
        self._stats_asks: collections.deque[int] = collections.deque()  # see stats()
        # Whoever pops a call's entry settles it (the I/O thread) or abandons it (its caller):
        # dict.pop is atomic, so each call is settled exactly once.
        self._pending: dict[int, Future[Any] | LightFuture] = {}
        self._in_flight = InFlight()  # the I/O thread's: which calls each sent message carries
        self._ids = itertools.count()
        self._seqs = itertools.count()
        self._welcomed = threading.Event()
        self._idle = threading.Event()
        self._connected = False
        self._lost_reason = "no server has answered yet"
        self._refusing = False  # close() began: new calls are refused
        self._closing = False  # close() is done with the calls: the I/O thread ends
        self._thread = threading.Thread(target=self._loop, name="batch-inference-client",
                                        daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ caller side
    def wait_connected(self, timeout_s: float) -> bool:
        """Whether a server answered within ``timeout_s``."""
        return self._welcomed.wait(timeout_s)

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def pending_count(self) -> int:
        """Calls sent or queued whose outcome has not arrived."""
        return len(self._pending)

    @property
    def messages_in_flight(self) -> int:
        """Sent messages with a call still unsettled (what a ``refused`` reply may name)."""
        return len(self._in_flight)

    def submit(self, args: tuple[Any, ...], deadline_s: float | None) -> Future[Any]:
        """Queue one request; its future gets the result or a typed error.

        Cancelling the future tells the server to drop the request.
        """
        future: Future[Any] = Future()
        request_id = self._queue(args, deadline_s, future)
        future.add_done_callback(lambda f: self._on_done(request_id, f))
        return future

    def send(self, args: tuple[Any, ...], deadline_s: float | None,
             loop: Any = None) -> tuple[LightFuture, int]:
        """Queue one request: the light future its one caller waits on (awaits, with an
        event ``loop``), and its id, for :meth:`abandon`."""
        future = LightFuture(loop)
        return future, self._queue(args, deadline_s, future)

    def stats(self, timeout_s: float | None) -> HostStats:
        """The serving host's :class:`HostStats`, asked over the socket (within ``timeout_s``)."""
        if self._refusing:
            raise HostNotRunningError("the remote host is stopped: call start() first")
        if not self._connected:
            raise RemoteHostLostError(f"no server on {self.path.name}: {self._lost_reason}")
        waiter = LightFuture()
        request_id = next(self._ids)
        self._pending[request_id] = waiter
        self._stats_asks.append(request_id)
        self._wakeup.set()
        if not waiter.wait(timeout_s):
            if self.abandon(request_id):
                raise RequestTimeoutError(f"the server sent no stats within {timeout_s} s")
            waiter.wait(None)  # the answer arrived as the time ran out: take it
        return waiter.result()

    def abandon(self, request_id: int, reason: str = "cancelled") -> bool:
        """Drop a call its caller gave up on; ``False`` if the I/O thread is settling it.

        (The I/O thread pops an entry and settles it at once, so a caller that
        finds it gone waits only for that.)
        """
        if self._pending.pop(request_id, None) is None:
            return False
        self._cancels.append(request_id)  # tell the server to drop it
        self._wakeup.set()
        return True

    def _queue(self, args: tuple[Any, ...], deadline_s: float | None,
               call: Future[Any] | LightFuture) -> int:
        if self._refusing:
            raise HostNotRunningError("the remote host is stopped: call start() first")
        if not self._connected:
            raise RemoteHostLostError(f"no server on {self.path.name}: {self._lost_reason}")
        encoded = _wire.encode_value(args)
        if encoded.nbytes > self.max_message_bytes // 2:
            raise WireFormatError(
                f"a request of {encoded.nbytes} bytes exceeds half of "
                f"max_message_bytes={self.max_message_bytes}"
            )
        request_id = next(self._ids)
        self._pending[request_id] = call
        self._outgoing.append((request_id, deadline_s, encoded))
        self._wakeup.set()
        return request_id

    def _on_done(self, request_id: int, future: Future[Any]) -> None:
        if self._pending.pop(request_id, None) is not None and future.cancelled():
            self._cancels.append(request_id)  # tell the server to drop it
            self._wakeup.set()

    def close(self, timeout_s: float | None = None, cancel_pending: bool = False) -> bool:
        """Wait (up to ``timeout_s``) for pending calls, then fail the rest and disconnect.

        With ``cancel_pending`` nothing is waited for. The server is asked to
        drop every call failed here (those whose batch has not started).
        Returns ``True`` when the I/O thread ended and no call was left to fail
        (with ``cancel_pending``: when the I/O thread ended).
        """
        self._refusing = True
        deadline_s = None if timeout_s is None else time.monotonic() + timeout_s
        while self._pending and self._connected and not cancel_pending:
            wait_s = 0.1 if deadline_s is None else min(0.1, deadline_s - time.monotonic())
            if wait_s <= 0:
                break
            self._idle.wait(wait_s)  # set by the I/O thread when nothing is pending
        finished = cancel_pending or not self._pending
        dropped = self._fail_all(
            HostStoppedError("the remote host was stopped before this call finished"))
        self._cancels.extend(dropped)  # sent by the I/O thread's last turn (see _loop)
        self._closing = True
        self._wakeup.set()
        self._thread.join(5.0)
        self._wakeup.close()
        return finished and not self._thread.is_alive()

    # ------------------------------------------------------------------ I/O thread
    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        poller.register(self._wakeup.fd, zmq.POLLIN)
        linger_ms = 0
        try:
            while not self._closing:
                events = dict(poller.poll(1000))
                if self._socket in events:
                    self._receive()  # first: a "bye" explains the disconnect that follows
                    if not self._pending:
                        self._idle.set()
                if self._monitor in events:
                    self._on_monitor()
                self._wakeup.clear()
                self._send_outgoing()
                self._send_stats_asks()
            if self._cancels and self._connected:  # close() failed calls: the server drops them
                self._send_outgoing()
                linger_ms = 200  # a bounded moment for that last message to leave
        finally:
            self._socket.disable_monitor()
            self._monitor.close(0)
            self._socket.close(linger_ms)
            self._context.term()

    def _on_monitor(self) -> None:
        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)["event"]
            except zmq.Again:
                return
            if event == zmq.EVENT_CONNECTED:
                self._send({"kind": "hello"}, [])
            elif event == zmq.EVENT_DISCONNECTED:
                self._lose("the connection to the server dropped (it died or stopped)")

    def _lose(self, reason: str) -> None:
        if self._connected:  # keep the first reason (a "bye" before its disconnect)
            self._lost_reason = reason
        self._connected = False
        self._in_flight.clear()
        self._fail_all(RemoteHostLostError(f"lost the server on {self.path.name}: {reason}"))

    def _fail_all(self, error: BaseException) -> list[int]:
        """Fail every pending call with ``error``; returns their ids."""
        while self._outgoing:
            self._outgoing.popleft()
        failed: list[int] = []
        while self._pending:
            try:
                request_id, call = self._pending.popitem()
            except KeyError:
                break  # a caller popped the last one meanwhile
            settle([(call, error, True)])
            failed.append(request_id)
        return failed

    def _send(self, header: dict[str, Any], buffers: list[Any]) -> bool:
        header["v"] = _wire.PROTOCOL_VERSION
        try:
            self._socket.send_multipart(_wire.pack(header, buffers), zmq.NOBLOCK, copy=False)
        except zmq.ZMQError:
            return False
        self.messages_sent += 1
        return True

    def _receive(self) -> None:
        for _ in range(64):  # bounded, so that gathered requests are sent in between
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.messages_received += 1
            try:
                header, buffers = _wire.unpack(frames, 2 * self.max_message_bytes)
                self._on_message(header, buffers)
            except Exception as error:  # noqa: BLE001 - the I/O thread must live on
                self._lose(f"the server sent a malformed message: {error!r}")

    def _on_message(self, header: dict[str, Any], buffers: list[memoryview]) -> None:
        kind = header["kind"]
        if kind == "results":
            for item in header.get("items", []):
                self._on_result(item, buffers)
        elif kind == "welcome":
            pid, limit = header.get("pid"), header.get("max_message_bytes")
            self.server_pid = pid if type(pid) is int else None
            if type(limit) is int and limit > 0:
                self.max_message_bytes = min(self.max_message_bytes, limit)
            self._connected = True
            self._welcomed.set()
        elif kind == "refused":
            error = _wire.error_from_payload(header.get("error"))
            seq = header.get("seq")
            for request_id in self._in_flight.refused(seq) if type(seq) is int else []:
                self._settle(request_id, error)
        elif kind == "bye":
            self._lose("the server stopped")
        elif kind == "stats":
            seq = header.get("seq")
            for request_id in self._in_flight.refused(seq) if type(seq) is int else []:
                try:
                    self._settle(request_id, decode_stats(header.get("stats")), ok=True)
                except WireFormatError as error:
                    self._settle(request_id, error)

    def _on_result(self, item: Any, buffers: list[memoryview]) -> None:
        if not isinstance(item, dict) or type(item.get("id")) is not int:
            raise WireFormatError(f"malformed result item {_wire.short(item)}")
        if item.get("ok") is True:
            base = item.get("b", 0)
            try:
                value = _wire.decode_value(item.get("value"), buffers, base if
                                           type(base) is int else -len(buffers) - 1)
            except WireFormatError as error:
                self._settle(item["id"], error)
                return
            self._settle(item["id"], value, ok=True)
        else:
            self._settle(item["id"], _wire.error_from_payload(item.get("error")))

    def _settle(self, request_id: int, outcome: Any, ok: bool = False) -> None:
        self._in_flight.settled(request_id)  # before its caller can see the outcome
        call = self._pending.pop(request_id, None)
        if call is not None:
            settle([(call, outcome, not ok)])

    def _send_outgoing(self) -> None:
        if not self._outgoing and not self._cancels:
            return
        if not self._connected:
            self._fail_all(RemoteHostLostError(
                f"no server on {self.path.name}: {self._lost_reason}"))
            self._cancels.clear()
            return
        cancels = [self._cancels.popleft() for _ in range(len(self._cancels))]
        for request_id in cancels:
            self._in_flight.settled(request_id)  # its caller gave up on it
        items: list[dict[str, Any]] = []
        buffers: list[Any] = []
        size = 0
        now_s = time.monotonic()
        while self._outgoing:
            request_id, deadline_s, encoded = self._outgoing[0]
            if items and size + encoded.nbytes > self.max_message_bytes // 2:
                break
            self._outgoing.popleft()
            if request_id not in self._pending:
                continue  # abandoned, or failed, before it left
            item: dict[str, Any] = {"id": request_id, "args": encoded.tree, "b": len(buffers)}
            if deadline_s is not None:
                item["timeout_s"] = max(0.0, deadline_s - now_s)
            items.append(item)
            buffers.extend(encoded.buffers)
            size += encoded.nbytes
        seq = next(self._seqs)
        # Kept until each of its calls is settled: a "refused" naming it may come at any time.
        self._in_flight.sent(seq, [item["id"] for item in items])
        if not self._send({"kind": "call", "seq": seq, "items": items, "cancel": cancels},
                          buffers):
            self._lose("could not send to the server")
        if self._outgoing:
            self._wakeup.set()  # the rest did not fit in one message

    def _send_stats_asks(self) -> None:
        """Send the ``stats`` requests callers queued (each answered by a ``stats`` message)."""
        while self._stats_asks:
            request_id = self._stats_asks.popleft()
            if request_id not in self._pending:
                continue  # abandoned, or failed, before it left
            seq = next(self._seqs)
            self._in_flight.sent(seq, [request_id])  # so that a "refused" answer settles it too
            if not self._send({"kind": "stats", "seq": seq}, []):
                self._lose("could not send to the server")
