"""Checks and small time helpers for :class:`~batch_inference.host.ModelHost`."""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any

from .errors import ConfigurationError, InvalidRequestError

#: A deadline or a wait without end (``timeout=math.inf``, ``put(..., until_s=FOREVER)``).
FOREVER = float("inf")


def positional_range(method: Any, bound: bool) -> tuple[int, float]:
    """How many positional arguments ``predict_batch`` takes: ``(least, most)``."""
    try:
        parameters = list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):
        return 0, float("inf")
    if not bound and parameters and parameters[0].name == "self":
        parameters = parameters[1:]
    low, high = 0, 0.0
    for p in parameters:
        if p.kind == p.VAR_POSITIONAL:
            high = float("inf")
        elif p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            high += 1
            low += p.default is p.empty
    return low, high


def checked_timeout(timeout: Any) -> float | None:
    """A valid ``timeout`` as a float (``None`` for infinity); refuses anything else."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise InvalidRequestError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    return None if timeout == FOREVER else float(timeout)


def remaining(deadline_s: float | None) -> float | None:
    return None if deadline_s is None else max(0.0, deadline_s - time.monotonic())


def loop_deadline(loop: asyncio.AbstractEventLoop, deadline_s: float | None) -> float | None:
    """A ``time.monotonic()`` deadline on ``loop``'s clock, for ``asyncio.timeout``."""
    return None if deadline_s is None else loop.time() + (deadline_s - time.monotonic())


def timeout_message(since_s: float) -> str:
    """What a request that waited since ``since_s`` (monotonic) and timed out is told."""
    waited = time.monotonic() - since_s
    return f"no result within the deadline (waited {waited:.3f} s)"


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
    return value


def positive_seconds(name: str, value: Any) -> float:
    """A setting in seconds that must be a number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigurationError(f"{name} must be a number of seconds > 0, got {value!r}")
    return float(value)


def optional_seconds(name: str, value: Any) -> float | None:
    """A setting in seconds: ``None`` or a number > 0 (infinity means ``None``)."""
    if value is None:
        return None
    try:
        return checked_timeout(value)
    except InvalidRequestError:
        raise ConfigurationError(
            f"{name} must be a number of seconds > 0, got {value!r}") from None


def non_negative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigurationError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)
