"""RemoteModelHost: many processes on one machine share one model process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from .._checks import checked_timeout
from .._future import wait_async, wait_blocking
from .._lifecycle import HostLifecycle
from .._request import deadline_of
from ..batcher.base import Batcher
from ..errors import ConfigurationError, HostNotRunningError, RemoteHostLostError
from ..host import ModelHost
from ..stats import HostStats
from ._election import ServerLock, check_port, socket_path
from ._settings import DEFAULT_MAX_MESSAGE_BYTES, RemoteSettings

if TYPE_CHECKING:  # they import pyzmq (the "remote" extra): loaded when a host starts
    from ._client import RemoteClient
    from ._server import RemoteServer

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "RemoteModelHost"]


class RemoteModelHost(HostLifecycle):
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
    waits for its pending calls (up to ``timeout``) and disconnects; with
    ``cancel_pending=True`` they fail at once with
    :class:`~batch_inference.errors.HostStoppedError` and the server drops those
    whose batch has not started.

    **Lifecycle**, every host's: :meth:`start`
    on a started host raises
    :class:`~batch_inference.errors.HostAlreadyRunningError` (a
    ``RuntimeError``, as batch-inference 1.0's remote host raises);
    ``running`` is ``False`` while a client has lost its server (``broken``
    is then ``True``, until a new server answers); ``with`` and ``async with``.

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
        check_port(grpc_port)
        _require_pyzmq()
        self._configure(RemoteSettings.build(
            grpc_port, batcher, max_batch_size, wait_ms, wait_n,
            max_message_bytes=max_message_bytes, connect_timeout_s=connect_timeout_s,
            **host_options), model_cls)

    @classmethod
    def from_settings(cls, settings: RemoteSettings, model_cls: type) -> RemoteModelHost:
        """A host with settings checked earlier (``@remote_batching`` uses it)."""
        _require_pyzmq()
        host = cls.__new__(cls)
        host._configure(settings, model_cls)
        return host

    def _configure(self, settings: RemoteSettings, model_cls: type) -> None:
        super().__init__()
        self._settings = settings
        self.local_host = ModelHost.from_settings(settings.host, model_cls)
        self._lock = ServerLock(settings.grpc_port)
        self._server: RemoteServer | None = None
        self._client: RemoteClient | None = None
        self._broken_when_stopped = False

    def __call__(self, *model_args: Any, **model_kwargs: Any) -> RemoteModelHost:
        """Set the model's constructor arguments (batch-inference 1.0 style); returns ``self``."""
        self.local_host(*model_args, **model_kwargs)
        return self

    @property
    def settings(self) -> RemoteSettings:
        """Every setting, as checked once when the host (or its decorator) was made."""
        return self._settings

    @property
    def grpc_port(self) -> int:
        return self._settings.grpc_port

    @property
    def max_message_bytes(self) -> int:
        return self._settings.max_message_bytes

    @property
    def connect_timeout_s(self) -> float:
        return self._settings.connect_timeout_s

    @property
    def is_server(self) -> bool:
        """Whether this host serves the port (decided by :meth:`start`; ``False`` when stopped)."""
        return self._server is not None

    # ------------------------------------------------------------------ lifecycle
    # start(), stop(), running, broken and the context managers: HostLifecycle.
    def _describe(self) -> str:
        return f"the remote host on port {self.grpc_port}"

    def _run_broken(self) -> bool:
        server, client = self._server, self._client
        if server is not None:
            return self.local_host.broken
        if client is not None:
            return not client.connected  # its server went away (until a new one answers)
        return self._broken_when_stopped

    def _start_run(self) -> None:
        """Serve the port if nobody does, else connect to its server."""
        from ._client import RemoteClient

        self._broken_when_stopped = False
        path = socket_path(self.grpc_port)
        deadline_s = time.monotonic() + self.connect_timeout_s
        client: RemoteClient | None = None
        while True:
            if self._lock.try_acquire():
                if client is not None:
                    client.close(0.0)
                self._serve(path)
                return
            if client is None:
                client = RemoteClient(path, self.max_message_bytes)
            if client.wait_connected(min(0.1, max(0.0, deadline_s - time.monotonic()))):
                self._client = client
                return
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

    def _stop_run(self, cancel_pending: bool, timeout: float | None) -> bool:
        """Serving: refuse new calls, drain (or cancel) the local host, ``bye`` to clients.

        A client: wait for its pending calls (or, with ``cancel_pending``, fail
        them at once and ask the server to drop them), then disconnect.
        """
        self._broken_when_stopped = self._run_broken()
        server, client = self._server, self._client
        self._server = self._client = None
        if client is not None:
            return client.close(timeout, cancel_pending)
        assert server is not None
        server.refuse_new()
        finished = self.local_host.stop(cancel_pending, timeout)
        server.close(5.0)
        try:
            server.path.unlink()
        except FileNotFoundError:
            pass
        self._lock.release()
        return finished

    # ------------------------------------------------------------------ calls
    # Served here: the local host's own door. Connected: the client sends the request
    # and the caller waits on its light future, as a local caller would (``_future.py``).
    def submit(self, *args: Any, timeout: float | None = None) -> Future[Any]:
        """Send one request; its :class:`concurrent.futures.Future` gets the outcome.

        Cancelling the future tells the server to drop the request if its batch
        has not started.
        """
        if self._server is not None:
            return self.local_host.submit(*args, timeout=timeout)
        deadline_s = deadline_of(timeout, self.local_host.default_timeout_s, time.monotonic())
        return self._connected().submit(args, deadline_s)

    def predict(self, *args: Any, timeout: float | None = None) -> Any:
        """Run one request through the shared model; block for its result.

        Raises what the local host's ``predict`` raises, plus
        :class:`~batch_inference.errors.RemoteModelError` (the model raised in
        the serving process) and
        :class:`~batch_inference.errors.RemoteHostLostError` (no server).
        """
        if self._server is not None:
            return self.local_host.predict(*args, timeout=timeout)
        client = self._connected()
        now_s = time.monotonic()
        deadline_s = deadline_of(timeout, self.local_host.default_timeout_s, now_s)
        future, request_id = client.send(args, deadline_s)
        return wait_blocking(future, deadline_s, client.abandon, request_id, now_s)

    async def predict_async(self, *args: Any, timeout: float | None = None) -> Any:
        """Awaitable :meth:`predict`; cancelling the awaiting task drops the request."""
        if self._server is not None:
            return await self.local_host.predict_async(*args, timeout=timeout)
        client = self._connected()
        now_s = time.monotonic()
        deadline_s = deadline_of(timeout, self.local_host.default_timeout_s, now_s)
        future, request_id = client.send(args, deadline_s, asyncio.get_running_loop())
        return await wait_async(future, deadline_s, client.abandon, request_id, now_s)

    def _connected(self) -> RemoteClient:
        client = self._client
        if client is None:
            raise HostNotRunningError(
                "the remote host is not running: call start() (or use `with host:`) first")
        return client


    def stats(self, timeout: float = 10.0) -> HostStats:
        """The shared host's stats: the serving process's ``ModelHost.stats()``.

        In a client process, one round trip to the server (within ``timeout``
        seconds, else :class:`~batch_inference.errors.RequestTimeoutError`): every
        process reports the same host, the one that holds the model.
        """
        if self._server is not None:
            return self.local_host.stats()
        client = self._client
        if client is None:
            raise HostNotRunningError(
                "the remote host is not running: call start() (or use `with host:`) first")
        return client.stats(checked_timeout(timeout))

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
