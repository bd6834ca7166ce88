"""The ``@remote_batching`` class decorator (batch-inference 1.0's name)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ..batcher.base import Batcher
from ..errors import ConfigurationError
from ._settings import RemoteSettings
from .host import RemoteModelHost

__all__ = ["remote_batching"]

T = TypeVar("T", bound=type)


def remote_batching(
    grpc_port: int,
    batcher: Batcher | None = None,
    max_batch_size: int = 32,
    **host_options: Any,
) -> Callable[[T], T]:
    """Give a class with ``predict_batch`` a ``host()`` class method returning a RemoteModelHost.

    ``Cls.host(*args, **kwargs)`` returns a new, unstarted
    :class:`~batch_inference.RemoteModelHost` on ``grpc_port`` that builds
    ``Cls(*args, **kwargs)`` if it becomes the server. Settings are checked
    when the decorator is applied (naming a bad value).
    """

    def wrap(target: T) -> T:
        if not isinstance(target, type):
            raise ConfigurationError(f"@remote_batching decorates a class, got {target!r}")
        if not callable(getattr(target, "predict_batch", None)):
            raise ConfigurationError(f"{target!r} has no predict_batch method")
        # Checked once, now; every host reuses them.
        settings = RemoteSettings.build(grpc_port, batcher, max_batch_size, **host_options)

        def host(klass: type, *model_args: Any, **model_kwargs: Any) -> RemoteModelHost:
            remote = RemoteModelHost.from_settings(settings, klass)
            return remote(*model_args, **model_kwargs)

        host.__doc__ = f"A :class:`RemoteModelHost` serving ``{target.__name__}.predict_batch``."
        target.host = classmethod(host)  # type: ignore[attr-defined]
        return target

    return wrap
