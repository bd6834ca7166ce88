"""The settings of a :class:`~batch_inference.ModelHost`: one frozen object, checked once.

:meth:`HostSettings.build` takes the host's keywords (batch-inference 1.0's
``wait_ms``/``wait_n`` included), checks every value and returns a frozen
:class:`HostSettings`; a bad value raises
:class:`~batch_inference.errors.ConfigurationError` naming it. ``@batching``
builds one when it is applied and hands the same object to every host it
makes; a :class:`~batch_inference.RemoteModelHost` builds one for the host it
may serve.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ._checks import non_negative, optional_seconds, positive_int
from ._devices import as_device
from .batcher.base import Batcher, BatchLimits
from .batcher.concat_batcher import ConcatBatcher
from .errors import ConfigurationError

__all__ = ["HostSettings"]


@dataclasses.dataclass(frozen=True)
class HostSettings:
    """Every setting of a :class:`~batch_inference.ModelHost` but its model (see its docstring).

    Build it with :meth:`build` (which accepts the host's keywords); the
    constructor checks the fields as given. ``devices`` decides
    ``num_workers`` when given.
    """

    batcher: Batcher = dataclasses.field(default_factory=ConcatBatcher)
    max_batch_size: int = 32
    max_delay_s: float = 0.0
    max_batch_tokens: int | None = None
    wait_n: int | None = None
    num_workers: int = 1
    devices: tuple[Any, ...] | None = None
    max_queue_size: int | None = None
    default_timeout_s: float | None = None
    isolate_failures: bool = True
    output_device: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.batcher, Batcher):
            raise ConfigurationError(f"batcher must be a Batcher instance, got {self.batcher!r}")
        positive_int("max_batch_size", self.max_batch_size)
        non_negative("max_delay_s", self.max_delay_s)
        _optional(positive_int, "max_batch_tokens", self.max_batch_tokens)
        _optional(positive_int, "wait_n", self.wait_n)
        positive_int("num_workers", self.num_workers)
        if self.devices is not None and len(self.devices) != self.num_workers:
            raise ConfigurationError(
                f"num_workers={self.num_workers} but devices={list(self.devices)!r}: "
                "give one device per worker"
            )
        _optional(positive_int, "max_queue_size", self.max_queue_size)
        optional_seconds("default_timeout_s", self.default_timeout_s)

    @classmethod
    def build(
        cls,
        *,
        batcher: Batcher | None = None,
        max_batch_size: int = 32,
        max_delay_s: float = 0.0,
        max_batch_tokens: int | None = None,
        num_workers: int = 1,
        devices: Sequence[Any] | None = None,
        max_queue_size: int | None = None,
        default_timeout_s: float | None = None,
        isolate_failures: bool = True,
        output_device: Any = None,
        wait_ms: float | None = None,
        wait_n: int | None = None,
    ) -> HostSettings:
        """Check the host's keywords once and freeze them (1.0's names translated)."""
        if wait_ms is not None:
            if max_delay_s:
                raise ConfigurationError(
                    f"give max_delay_s or wait_ms, not both (got max_delay_s={max_delay_s!r}, "
                    f"wait_ms={wait_ms!r})"
                )
            max_delay_s = non_negative("wait_ms", wait_ms) / 1000.0
        if devices is not None:
            if len(devices) == 0:
                raise ConfigurationError("devices must name at least one device, got []")
            devices = tuple(devices)
            num_workers = len(devices)
        if output_device is not None:
            output_device = as_device(output_device)
        return cls(
            batcher=ConcatBatcher() if batcher is None else batcher,
            max_batch_size=max_batch_size,
            max_delay_s=non_negative("max_delay_s", max_delay_s),
            max_batch_tokens=max_batch_tokens,
            wait_n=wait_n,
            num_workers=num_workers,
            devices=devices,
            max_queue_size=max_queue_size,
            default_timeout_s=optional_seconds("default_timeout_s", default_timeout_s),
            isolate_failures=isolate_failures,
            output_device=output_device,
        )

    @property
    def limits(self) -> BatchLimits:
        """The batch limits these settings give (a host's starting limits)."""
        return BatchLimits(self.max_batch_size, self.max_batch_tokens, self.max_delay_s,
                           self.wait_n)


def _optional(check: Any, name: str, value: Any) -> None:
    if value is not None:
        check(name, value)
