"""The ``@batching`` class decorator: it only wires a class to a :class:`ModelHost`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, overload

from .batcher.base import Batcher
from .errors import ConfigurationError
from .host import ModelHost

__all__ = ["batching"]

T = TypeVar("T", bound=type)


@overload
def batching(cls: T) -> T: ...


@overload
def batching(
    cls: None = None,
    *,
    batcher: Batcher | None = None,
    max_batch_size: int = 32,
    **host_options: Any,
) -> Callable[[T], T]: ...


def batching(
    cls: Any = None,
    *,
    batcher: Batcher | None = None,
    max_batch_size: int = 32,
    **host_options: Any,
) -> Any:
    """Give a class with ``predict_batch`` a ``host()`` class method.

    Use it bare (``@batching``) or with settings
    (``@batching(batcher=SeqBatcher(...), max_batch_size=32, max_delay_s=0.002)``);
    every keyword of :class:`ModelHost` is accepted. The class itself is
    unchanged otherwise. ``Cls.host(*args, **kwargs)`` returns a new
    :class:`ModelHost` that builds ``Cls(*args, **kwargs)`` when it starts.

    Settings are checked when the decorator is applied, so a bad value fails
    at import time, naming the value.
    """

    def wrap(target: T) -> T:
        if not isinstance(target, type):
            raise ConfigurationError(f"@batching decorates a class, got {target!r}")
        # Build (and throw away) a host now: validates every setting at decoration time.
        ModelHost(target, batcher=batcher, max_batch_size=max_batch_size, **host_options)

        def host(klass: type, *model_args: Any, **model_kwargs: Any) -> ModelHost:
            return ModelHost(
                klass,
                batcher=batcher,
                max_batch_size=max_batch_size,
                model_args=model_args,
                model_kwargs=model_kwargs,
                **host_options,
            )

        host.__doc__ = f"A :class:`ModelHost` serving ``{target.__name__}.predict_batch``."
        target.host = classmethod(host)  # type: ignore[attr-defined]
        return target

    if cls is not None:
        return wrap(cls)
    return wrap
