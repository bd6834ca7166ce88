"""The asyncio twin of :class:`~batch_inference.remote.host.RemoteModelHost`."""

from __future__ import annotations

from typing import Any

from .._lifecycle import AsyncHostLifecycle
from ..batcher.base import Batcher
from ..stats import HostStats
from .host import RemoteModelHost

__all__ = ["AsyncRemoteModelHost"]


class AsyncRemoteModelHost(AsyncHostLifecycle):
    """:class:`~batch_inference.RemoteModelHost` for asyncio: ``await start()/predict()/stop()``.

    batch-inference 1.0's ``batch_inference.aio.RemoteModelHost``. Same
    election, wire, errors and fault behaviour as the thread version (it wraps
    one); ``predict`` never blocks the event loop, and cancelling the awaiting
    task drops the request on the server if its batch has not started.
    Its lifecycle (``start``, ``stop(cancel_pending, timeout)``, ``running``,
    ``broken``, ``async with``) is every host's, awaited; the blocking parts
    run in the event loop's default executor.
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
        super().__init__(self.sync_host)

    def __call__(self, *model_args: Any, **model_kwargs: Any) -> AsyncRemoteModelHost:
        """Set the model's constructor arguments (batch-inference 1.0 style); returns ``self``."""
        self.sync_host(*model_args, **model_kwargs)
        return self

    @property
    def is_server(self) -> bool:
        return self.sync_host.is_server

    async def predict(self, *args: Any, timeout: float | None = None) -> Any:
        """Run one request through the shared model; see ``RemoteModelHost.predict``."""
        return await self.sync_host.predict_async(*args, timeout=timeout)

    def stats(self, timeout: float = 10.0) -> HostStats:
        """The shared host's stats (see ``RemoteModelHost.stats``).

        Blocks for one round trip in a client process: from a coroutine, call
        it with ``await asyncio.to_thread(host.stats)``.
        """
        return self.sync_host.stats(timeout)
