"""The settings of a :class:`~batch_inference.RemoteModelHost`: one frozen object, checked once."""

from __future__ import annotations

import dataclasses
from typing import Any

from .._checks import positive_int, positive_seconds
from .._settings import HostSettings
from ..batcher.base import Batcher
from ._election import check_port

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "RemoteSettings"]

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class RemoteSettings:
    """The port, the wire's limits and the settings of the host served there.

    Build it with :meth:`build` (the remote host's keywords); the constructor
    checks the fields as given and raises
    :class:`~batch_inference.errors.ConfigurationError` naming a bad value.
    """

    grpc_port: int
    host: HostSettings
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    connect_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        check_port(self.grpc_port)
        positive_int("max_message_bytes", self.max_message_bytes)
        positive_seconds("connect_timeout_s", self.connect_timeout_s)

    @classmethod
    def build(
        cls,
        grpc_port: int,
        batcher: Batcher | None = None,
        max_batch_size: int = 32,
        wait_ms: float | None = 5,
        wait_n: int | None = 32,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        connect_timeout_s: float = 30.0,
        **host_options: Any,
    ) -> RemoteSettings:
        """Check the remote host's keywords once (``host_options`` as for ``ModelHost``)."""
        check_port(grpc_port)
        if "max_delay_s" in host_options and wait_ms == 5:
            wait_ms = None  # an explicit max_delay_s wins over 1.0's default wait_ms
        return cls(
            grpc_port=grpc_port,
            host=HostSettings.build(batcher=batcher, max_batch_size=max_batch_size,
                                    wait_ms=wait_ms, wait_n=wait_n, **host_options),
            max_message_bytes=positive_int("max_message_bytes", max_message_bytes),
            connect_timeout_s=positive_seconds("connect_timeout_s", connect_timeout_s),
        )
