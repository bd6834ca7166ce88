"""How many requests Ray Serve lets into a replica, so that the replica's batches can fill.

No Ray here: the rule is plain arithmetic, tested without a cluster.

Serve's router never lets more than ``max_ongoing_requests`` requests reach one
replica (default 5): the rest wait at the caller's handle or in the HTTP proxy.
A replica that batches for itself can therefore never form a batch larger
than ``max_ongoing_requests`` (Ray issue 43288). The rule:

* ``max_ongoing_requests = max_batch_size x batches_in_flight``, where
  ``batches_in_flight`` (default: the host's workers + 1) counts the batches a
  replica holds at once: one running per worker, plus the next one forming.
  Less than ``max_batch_size`` is refused.
* The host's ``max_queue_size`` is at least ``max_ongoing_requests``, so the
  host never refuses a request Serve let in: beyond the replica's share,
  requests queue in Serve (back-pressure there, seen by the autoscaler, and
  bounded by Serve's own ``max_queued_requests``).
* ``autoscaling_config["target_ongoing_requests"]`` defaults to
  ``max_batch_size``: a replica at target runs one full batch while the next
  forms, and Serve adds replicas before requests would wait a batch more.
  Serve's own default (2) would read every batching replica as overloaded. A
  target above ``max_ongoing_requests`` can never be reached and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError

__all__ = ["ReplicaLimits", "check_interval", "replica_limits"]


@dataclass(frozen=True)
class ReplicaLimits:
    """The settings of one replica that must agree with each other (see the module docstring)."""

    max_batch_size: int
    batches_in_flight: int
    max_ongoing_requests: int
    max_queue_size: int
    target_ongoing_requests: int


def replica_limits(
    max_batch_size: int,
    *,
    num_workers: int = 1,
    batches_in_flight: int | None = None,
    max_ongoing_requests: int | None = None,
    max_queue_size: int | None = None,
    target_ongoing_requests: int | None = None,
) -> ReplicaLimits:
    """Fill in and check a replica's limits by the rule above.

    Parameters
    ----------
    max_batch_size:
        The host's most requests per ``predict_batch`` call.
    num_workers:
        The host's workers (batches running at once).
    batches_in_flight:
        Batches a replica holds at once; default ``num_workers + 1``.
    max_ongoing_requests:
        Serve's cap per replica; default ``max_batch_size x batches_in_flight``.
    max_queue_size:
        The host's queue bound; default ``max_ongoing_requests``.
    target_ongoing_requests:
        For Serve's autoscaler; default ``max_batch_size``.

    Raises
    ------
    ConfigurationError
        A value is not a positive integer, ``max_ongoing_requests`` is below
        ``max_batch_size``, ``max_queue_size`` below ``max_ongoing_requests``,
        or ``target_ongoing_requests`` above ``max_ongoing_requests``.
    """
    _positive("max_batch_size", max_batch_size)
    _positive("num_workers", num_workers)
    if batches_in_flight is None:
        batches_in_flight = num_workers + 1
    _positive("batches_in_flight", batches_in_flight)
    if max_ongoing_requests is None:
        max_ongoing_requests = max_batch_size * batches_in_flight
    _positive("max_ongoing_requests", max_ongoing_requests)
    if max_ongoing_requests < max_batch_size:
        raise ConfigurationError(
            f"max_ongoing_requests={max_ongoing_requests!r} is below max_batch_size="
            f"{max_batch_size!r}: Serve never lets more than max_ongoing_requests requests "
            f"into a replica, so no batch could hold more; use at least {max_batch_size} "
            f"(default: max_batch_size x batches_in_flight = {max_batch_size * batches_in_flight})"
        )
    if max_queue_size is None:
        max_queue_size = max_ongoing_requests
    _positive("max_queue_size", max_queue_size)
    if max_queue_size < max_ongoing_requests:
        raise ConfigurationError(
            f"max_queue_size={max_queue_size!r} is below max_ongoing_requests="
            f"{max_ongoing_requests!r}: the host would refuse requests Serve let into the "
            "replica; leave it unset, or give at least max_ongoing_requests"
        )
    if target_ongoing_requests is None:
        target_ongoing_requests = max_batch_size
    _positive("target_ongoing_requests", target_ongoing_requests)
    if target_ongoing_requests > max_ongoing_requests:
        raise ConfigurationError(
            f"autoscaling target_ongoing_requests={target_ongoing_requests!r} is above "
            f"max_ongoing_requests={max_ongoing_requests!r}: a replica never holds that "
            "many, so the autoscaler would never add one"
        )
    return ReplicaLimits(max_batch_size, batches_in_flight, max_ongoing_requests,
                         max_queue_size, target_ongoing_requests)


def autoscaling_with_target(config: dict[str, Any] | None, limits: ReplicaLimits
                            ) -> dict[str, Any] | None:
    """``config`` with ``target_ongoing_requests`` filled in from ``limits`` (``None`` stays)."""
    if config is None:
        return None
    if not isinstance(config, dict):
        raise ConfigurationError(
            f"autoscaling_config must be a dict of Serve's AutoscalingConfig fields, got {config!r}"
        )
    return {**config, "target_ongoing_requests": limits.target_ongoing_requests}


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")


def check_interval(interval_s: Any) -> float | None:
    """``interval_s`` as a float, or ``None`` (no export); anything else is refused."""
    if interval_s is None:
        return None
    if isinstance(interval_s, bool) or not isinstance(interval_s, (int, float)) or not (
            0 < interval_s < float("inf")):
        raise ConfigurationError(
            f"metrics_interval_s must be a positive number of seconds or None, got {interval_s!r}")
    return float(interval_s)
