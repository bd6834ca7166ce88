"""RemoteModelHost: many processes on one machine share one model process."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from .._checks import checked_timeout, positive_int
from ..batcher.base import Batcher
from ..errors import ConfigurationError, HostNotRunningError, RemoteHostLostError
from ..errors import RequestTimeoutError as _RequestTimeoutError
from ..host import ModelHost
from ._election import ServerLock, check_port, socket_path

if TYPE_CHECKING:  # they import pyzmq (the "remote" extra): loaded when a host starts
    from ._client import RemoteClient
    from ._server import RemoteServer

__all__ = ["RemoteModelHost"]

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class RemoteModelHost:
    """A :class:`~batch_inference.ModelHost` shared by every process that names the same port.

    Each process (e.g. each worker of a web server) builds one with the same
    ``grpc_port``. At :meth:`start`, exactly one of them takes the port's lock,
    loads the model and serves (``is_server`` is ``True``); the others connect
    to it over a Unix socket in a private directory (only the same OS user can
    connect) and send their callers' requests there, many per message.
    Several hosts on one port in one process follow the same rule.

    Every feature of the local host holds across processes: ``timeout`` (the
    deadline travels with each request), cancellation (a caller that gives up
    has its request dropped if its batch has not started), the library's typed
    errors (re-raised as the same class), and the model's own exception, which
    arrives as :class:`~batch_inference.errors.RemoteModelError` carrying its
    type name, message and traceback text. Only tensors, arrays, scalars,
    strings, bytes and tuples/lists/dicts of these cross; nothing is unpickled.

    **Stopping and faults.** :meth:`stop` on the serving host drains: requests
    it has accepted are finished and answered, calls arriving meanwhile get
    :class:`~batch_inference.errors.HostNotRunningError`; then each client is
    told ``bye``. A client's pending calls then fail with
    :class:`~batch_inference.errors.RemoteHostLostError`, and so does every
    later call until a new server takes the port (ZeroMQ reconnects on its own;
    a process that starts a new ``RemoteModelHost`` on the port becomes that
    server). If the serving process dies, clients see the connection drop at
    once and fail their pending calls in the same way. :meth:`stop` on a client
    waits for its pending calls (up to ``timeout``) and disconnects.

    Parameters
    ----------
    model_cls:
        A class with ``predict_batch``; built only in the serving process.
    grpc_port:
        The number that names the shared host (batch-inference 1.0's name; no
        TCP port is opened, it names the Unix socket).
    batcher, max_batch_size, wait_ms, wait_n:
        As for :class:`~batch_inference.ModelHost` (1.0's defaults).
    max_message_bytes:
        Largest message the server accepts; larger ones are refused with
        :class:`~batch_inference.errors.WireFormatError` to that client alone.
    connect_timeout_s:
        How long :meth:`start` waits for the serving host to answer.
    **host_options:
        Further :class:`~batch_inference.ModelHost` keywords (used when serving).
    """

    def __init__(
        self,
        model_cls: type,
        grpc_port: int,
        batcher: Batcher | None = None,
        max_batch_size: int = 32,
        wait_ms: float = 5,
        wait_n: int = 32,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        connect_timeout_s: float = 30.0,
        **host_options: Any,
    ) -> None:
        self.grpc_port = check_port(grpc_port)
        _require_pyzmq()
        positive_int("max_message_bytes", max_message_bytes)
        if isinstance(connect_timeout_s, bool) or not isinstance(
                connect_timeout_s, (int, float)) or not connect_timeout_s > 0:
            raise ConfigurationError(
                f"connect_timeout_s must be a number of seconds > 0, got {connect_timeout_s!r}")
        self.max_message_bytes = max_message_bytes
        self.connect_timeout_s = float(connect_timeout_s)
        self.local_host = ModelHost(model_cls, batcher=batcher, max_batch_size=max_batch_size,
                                    wait_ms=wait_ms, wait_n=wait_n, **host_options)
        self._lock = ServerLock(self.grpc_port)
        self._server: RemoteServer | None = None
        self._client: RemoteClient | None = None
        self._lifecycle = threading.Lock()

    def __call__(self, *model_args: Any, **model_kwargs: Any) -> RemoteModelHost:
        """Set the model's constructor arguments (batch-inference 1.0 style); returns ``self``."""
        self.local_host(*model_args, **model_kwargs)
        return self

    @property
    def is_server(self) -> bool:
        """Whether this host serves the port (decided by :meth:`start`; ``False`` before)."""
        return self._server is not None

    @property
    def running(self) -> bool:
        return self._server is not None or (self._client is not None and self._client.connected)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> RemoteModelHost:
        """Serve the port if nobody does, else connect to its server. Idempotent."""
        with self._lifecycle:
            if self._server is not None or self._client is not None:
                return self
            from ._client import RemoteClient

            path = socket_path(self.grpc_port)
            deadline_s = time.monotonic() + self.connect_timeout_s
            client: RemoteClient | None = None
            while True:
                if self._lock.try_acquire():
                    if client is not None:
                        client.close(0.0)
                    self._serve(path)
                    return self
                if client is None:
                    client = RemoteClient(path, self.max_message_bytes)
                if client.wait_connected(min(0.1, max(0.0, deadline_s - time.monotonic()))):
                    self._client = client
                    return self
                if time.monotonic() >= deadline_s:
                    client.close(0.0)
                    raise RemoteHostLostError(
                        f"another process holds port {self.grpc_port} but its server did not "
                        f"answer within connect_timeout_s={self.connect_timeout_s}"
                    )

    def _serve(self, path: Any) -> None:
        from ._server import RemoteServer

        try:
            self.local_host.start()
            self._server = RemoteServer(self.local_host, path, self.max_message_bytes)
        except BaseException:
            self.local_host.stop()
            self._lock.release()
            raise

    def stop(self, timeout: float | None = None) -> bool:
        """Stop serving (drain, then ``bye`` to clients) or disconnect; see the class docstring.

        Returns ``True`` when everything accepted was finished within ``timeout``.
        """
        with self._lifecycle:
            server, client = self._server, self._client
            self._server = self._client = None
            if client is not None:
                return client.close(timeout)
            if server is None:
                return True
            server.refuse_new()
            finished = self.local_host.stop(timeout=timeout)
            server.close(5.0)
            try:
                server.path.unlink()
            except FileNotFoundError:
                pass
            self._lock.release()
            return finished

    def __enter__(self) -> RemoteModelHost:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ calls
    def submit(self, *args: Any, timeout: float | None = None) -> Future[Any]:
        """Send one request; its :class:`concurrent.futures.Future` gets the outcome.

        Cancelling the future tells the server to drop the request if its batch
        has not started.
        """
        server, client = self._server, self._client
        if server is not None:
            return self.local_host.submit(*args, timeout=timeout)
        if client is None:
            raise HostNotRunningError(
                "the remote host is not running: call start() (or use `with host:`) first")
        return client.submit(args, self._deadline(timeout))

    def _deadline(self, timeout: float | None) -> float | None:
        timeout = (self.local_host.default_timeout_s if timeout is None
                   else checked_timeout(timeout))
        return None if timeout is None else time.monotonic() + timeout

    def predict(self, *args: Any, timeout: float | None = None) -> Any:
        """Run one request through the shared model; block for its result.

        Raises what the local host's ``predict`` raises, plus
        :class:`~batch_inference.errors.RemoteModelError` (the model raised in
        the serving process) and
        :class:`~batch_inference.errors.RemoteHostLostError` (no server).
        """
        if self._server is not None:
            return self.local_host.predict(*args, timeout=timeout)
        client = self._client
        if client is None:
            raise HostNotRunningError(
                "the remote host is not running: call start() (or use `with host:`) first")
        try:
            return client.call(args, self._deadline(timeout))
        except TimeoutError as error:
            if isinstance(error, _RequestTimeoutError):
                raise  # the call's own outcome (the server's deadline, or the model's error)
            raise _RequestTimeoutError(f"no result within the deadline of {timeout} s") from None

    def map(
        self,
        *iterables: Iterable[Any],
        window: int | None = None,
        return_exceptions: bool = False,
        progress: bool = False,
        timeout: float | None = None,
    ) -> Iterator[Any]:
        """Run a whole dataset through the shared model; yield the results in input order.

        As :meth:`batch_inference.ModelHost.map`, over :meth:`submit`: each
        read of the window is ordered with this host's batcher and sent at
        once; closing the generator cancels (on the server) what has not
        started. ``window=None`` is 16 x this host's ``max_batch_size``.
        """
        from .._map import map_requests

        return map_requests(
            lambda *args: self.submit(*args, timeout=timeout),
            self.local_host.batcher, iterables, window=window,
            max_batch_size=self.local_host.max_batch_size,
            return_exceptions=return_exceptions, progress=progress,
        )


def _require_pyzmq() -> None:
    try:
        import zmq  # noqa: F401
    except ImportError:
        raise ConfigurationError(
            "RemoteModelHost needs pyzmq: pip install 'batch_inference[remote]'"
        ) from None
