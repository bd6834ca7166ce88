"""batch-inference 1.0's asyncio hosts: ``from batch_inference.aio import ModelHost``.

``RemoteModelHost`` here is the asyncio twin of :class:`batch_inference.RemoteModelHost`
(``await start()/predict()/stop()``), as in 1.0; it is loaded on first use.
"""

from .model_host import ModelHost

__all__ = ["ModelHost", "RemoteModelHost"]


def __getattr__(name: str) -> object:
    if name == "RemoteModelHost":
        from ..remote import AsyncRemoteModelHost

        return AsyncRemoteModelHost
    raise AttributeError(f"module 'batch_inference.aio' has no attribute {name!r}")
