"""The remote mode: many processes on one machine share one model process.

:class:`RemoteModelHost` (threads), :class:`AsyncRemoteModelHost` (asyncio)
and the :func:`remote_batching` class decorator; batch-inference 1.0's names.
See ``docs/remote.md`` for how it works, its security model and its faults.
"""

from .aio import AsyncRemoteModelHost
from .decorator import remote_batching
from .host import RemoteModelHost

__all__ = ["AsyncRemoteModelHost", "RemoteModelHost", "remote_batching"]
