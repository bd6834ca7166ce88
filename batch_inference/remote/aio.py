"""The asyncio twin of :class:`~batch_inference.remote.host.RemoteModelHost`."""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

from ..batcher.base import Batcher
from ..errors import HostNotRunningError, RequestTimeoutError
from ..stats import HostStats
from .host import RemoteModelHost

__all__ = ["AsyncRemoteModelHost"]


class AsyncRemoteModelHost:
    """:class:`~batch_inference.RemoteModelHost` for asyncio: ``await start()/predict()/stop()``.

    batch-inference 1.0's ``batch_inference.aio.RemoteModelHost``. Same
    election, wire, errors and fault behaviour as the thread version (it wraps
    one); ``predict`` never blocks the event loop, and cancelling the awaiting
    task drops the request on the server if its batch has not started.
    """

    def __init__(
        self,
        model_cls: type,
        grpc_port: int,
        batcher: Batcher | None = None,
        max_batch_size: int = 32,
        wait_ms: float = 5,
        wait_n: int = 32,
        **options: Any,
    ) -> None:
        options.pop("event_loop", None)  # 1.0 took the loop; ours is the running one
        self.sync_host = RemoteModelHost(model_cls, grpc_port, batcher, max_batch_size,
                                         wait_ms, wait_n, **options)

    def __call__(self, *model_args: Any, **model_kwargs: Any) -> AsyncRemoteModelHost:
        """Set the model's constructor arguments (batch-inference 1.0 style); returns ``self``."""
        self.sync_host(*model_args, **model_kwargs)
        return self

    @property
    def is_server(self) -> bool:
        return self.sync_host.is_server

    async def start(self) -> AsyncRemoteModelHost:
        """Serve or connect (in a thread: building the model or waiting must not block the loop)."""
        await asyncio.get_running_loop().run_in_executor(None, self.sync_host.start)
        return self

    async def stop(self, timeout: float | None = None) -> bool:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(self.sync_host.stop, timeout))

    async def predict(self, *args: Any, timeout: float | None = None) -> Any:
        """Run one request through the shared model; see ``RemoteModelHost.predict``."""
        host = self.sync_host
        if host.is_server:
            return await host.local_host.predict_async(*args, timeout=timeout)
        client = host._client
        if client is None:
            raise HostNotRunningError(
                "the remote host is not running: call `await start()` (or `async with`) first")
        deadline_s = host._deadline(timeout)
        future = client.submit(args, deadline_s)
        loop = asyncio.get_running_loop()
        waiter = asyncio.wrap_future(future, loop=loop)
        try:
            if deadline_s is None:
                return await waiter
            async with asyncio.timeout(max(0.0, deadline_s - time.monotonic())):
                return await asyncio.shield(waiter)
        except TimeoutError:
            if future.done() and not future.cancelled():
                return future.result()
            future.cancel()
            raise RequestTimeoutError(f"no result within the deadline of {timeout} s") from None
        except BaseException:
            future.cancel()
            raise

    def stats(self, timeout: float = 10.0) -> HostStats:
        """The shared host's stats (see ``RemoteModelHost.stats``).

        Blocks for one round trip in a client process: from a coroutine, call
        it with ``await asyncio.to_thread(host.stats)``.
        """
        return self.sync_host.stats(timeout)

    async def __aenter__(self) -> AsyncRemoteModelHost:
        return await self.start()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.stop()
