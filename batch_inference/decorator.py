"""The ``@batching`` class decorator: it only wires a class to a :class:`ModelHost`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, overload

from ._settings import HostSettings
from .batcher.base import Batcher
from .errors import ConfigurationError
from .host import ModelHost

__all__ = ["batching"]

T = TypeVar("T", bound=type)


@overload
def batching(target: T) -> T: ...


@overload
def batching(
    target: Batcher | None = None,
    max_batch_size: int = 32,
    *,
    batcher: Batcher | None = None,
    **host_options: Any,
) -> Callable[[T], T]: ...


def batching(
    target: Any = None,
    max_batch_size: int = 32,
    *,
    batcher: Batcher | None = None,
    **host_options: Any,
) -> Any:
    """Give a class with ``predict_batch`` a ``host()`` class method.

    Three forms, all of batch-inference 1.0's:

    * bare: ``@batching``;
    * with keywords: ``@batching(batcher=SeqBatcher(...), max_batch_size=32,
      max_delay_s=0.002)``; every keyword of :class:`ModelHost` is accepted;
    * positional, as 1.0 allowed: ``@batching(SeqBatcher(...))`` or
      ``@batching(SeqBatcher(...), 32)`` (the batcher, then ``max_batch_size``).

    The class itself is unchanged otherwise. ``Cls.host(*args, **kwargs)``
    returns a new :class:`ModelHost` that builds ``Cls(*args, **kwargs)`` when
    it starts.

    Settings are checked when the decorator is applied, so a bad value fails
    at import time, naming the value.

    Parameters
    ----------
    target:
        The class (bare form) or a :class:`~batch_inference.batcher.base.Batcher`
        instance (1.0's positional form); ``None`` when only keywords are given.
    max_batch_size:
        Most requests in one ``predict_batch`` call.
    batcher:
        The batcher (keyword form); give it either here or as ``target``.
    **host_options:
        Any other keyword of :class:`ModelHost`.
    """
    if isinstance(target, Batcher):
        if batcher is not None:
            raise ConfigurationError(
                f"@batching got two batchers: {target!r} (positional) and batcher={batcher!r}"
            )
        batcher, target = target, None
    elif isinstance(target, type) and issubclass(target, Batcher):
        raise ConfigurationError(
            f"@batching takes a Batcher instance, got the class {target.__name__}: "
            f"write {target.__name__}(...)"
        )

    def wrap(cls: T) -> T:
        if not isinstance(cls, type):
            raise ConfigurationError(
                f"@batching decorates a class, got {cls!r} (its first positional argument "
                "may also be a Batcher instance: @batching(batcher, max_batch_size))"
            )
        if not callable(getattr(cls, "predict_batch", None)):
            raise ConfigurationError(f"{cls!r} has no predict_batch method")
        # Checked once, now (a bad value fails at import time); every host reuses them.
        settings = HostSettings.build(batcher=batcher, max_batch_size=max_batch_size,
                                      **host_options)

        def host(klass: type, *model_args: Any, **model_kwargs: Any) -> ModelHost:
            return ModelHost.from_settings(settings, klass, model_args=model_args,
                                           model_kwargs=model_kwargs)

        host.__doc__ = f"A :class:`ModelHost` serving ``{cls.__name__}.predict_batch``."
        cls.host = classmethod(host)  # type: ignore[attr-defined]
        return cls

    if target is not None:
        return wrap(target)
    return wrap
