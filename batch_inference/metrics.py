"""Prometheus metrics over a host's :meth:`~batch_inference.ModelHost.stats`.

Needs ``prometheus-client`` (``pip install 'batch_inference[metrics]'``);
``import batch_inference`` never imports it. A :class:`HostCollector` reads
``host.stats()`` at each scrape (nothing is recorded twice) and reports it
under one prefix, ``batch_inference_``, with base units in the names and a
``host`` label naming the host::

    from batch_inference.metrics import register

    register(host, name="embeddings")          # the default registry
    # or: prometheus_client.REGISTRY.register(HostCollector(host, "embeddings"))

Every batch carries a ``reason`` label saying why it started: ``full``,
``token_budget``, ``model_idle``, ``delay_elapsed``, ``deadline`` (see
:class:`~batch_inference.batcher.base.Selection`), or ``retry`` (a part of a
failed batch re-run to isolate the failing request). ``host`` may be a
:class:`~batch_inference.ModelHost`, its asyncio twin, or a
:class:`~batch_inference.RemoteModelHost`: on a remote client, ``stats()``
asks the serving process, so every process reports the one shared host.
See ``docs/metrics.md`` for the list and how it maps to Ray Serve's, Triton's
and text-embeddings-inference's metrics.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

from .errors import ConfigurationError
from .stats import BATCH_REASONS, Histogram, HostStats

__all__ = ["BATCH_SIZE_BUCKETS", "PREFIX", "HostCollector", "register"]

PREFIX = "batch_inference_"
#: Upper bounds of the batch-size histogram's buckets (exact: sizes are counted one by one).
BATCH_SIZE_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
#: ``HostStats`` field -> the ``outcome`` label of ``batch_inference_requests_total``.
_OUTCOMES = ("completed", "failed", "timed_out", "cancelled")


class StatsSource(Protocol):
    def stats(self) -> HostStats: ...


class HostCollector(Collector):
    """Reports the stats of one or more hosts, each under its ``host`` label.

    Parameters
    ----------
    host:
        Anything with ``stats() -> HostStats``.
    name:
        The value of the ``host`` label (e.g. the model's name).
    """

    def __init__(self, host: StatsSource, name: str) -> None:
        self._hosts: dict[str, StatsSource] = {}
        self._lock = threading.Lock()
        self.add(host, name)

    def add(self, host: StatsSource, name: str) -> None:
        """Report ``host`` too, labelled ``host=name`` (a name already reported is refused)."""
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"name must be a non-empty string, got {name!r}")
        if not callable(getattr(host, "stats", None)):
            raise ConfigurationError(f"host must have a stats() method, got {host!r}")
        with self._lock:
            if name in self._hosts:
                raise ConfigurationError(f"a host named {name!r} is already reported")
            self._hosts[name] = host

    def remove(self, name: str) -> None:
        """Stop reporting the host labelled ``name``."""
        with self._lock:
            if self._hosts.pop(name, None) is None:
                raise ConfigurationError(f"no host named {name!r} is reported")

    @property
    def names(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._hosts)

    def describe(self) -> list[Metric]:
        """The metric families (no samples): registering never calls ``stats()``."""
        return list(_families().values())

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            hosts = list(self._hosts.items())
        families = _families()
        for name, host in hosts:
            _add_samples(families, name, host.stats())
        yield from families.values()


#: The collector each registry holds (so that several hosts share its families).
_COLLECTORS: weakref.WeakKeyDictionary[CollectorRegistry, HostCollector] = (
    weakref.WeakKeyDictionary())
_REGISTERING = threading.Lock()


def register(
    host: StatsSource, name: str, registry: CollectorRegistry | None = None
) -> HostCollector:
    """Report ``host``'s stats in ``registry`` (default: ``prometheus_client.REGISTRY``).

    Hosts registered in one registry share one :class:`HostCollector` (one
    metric family each, one ``host`` label value per host); the collector is
    returned (``collector.remove(name)`` stops reporting that host).
    """
    registry = REGISTRY if registry is None else registry
    with _REGISTERING:
        collector = _COLLECTORS.get(registry)
        if collector is not None:
            collector.add(host, name)
            return collector
        collector = HostCollector(host, name)
        registry.register(collector)
        _COLLECTORS[registry] = collector
        return collector


def _families() -> dict[str, Any]:
    """Every family this module reports, empty, by short name."""
    p = PREFIX
    host = ["host"]
    return {
        "accepted": CounterMetricFamily(
            p + "requests_accepted", "Requests accepted into the queue.", labels=host),
        "requests": CounterMetricFamily(
            p + "requests", "Requests that ended, by outcome (completed, failed, "
            "timed_out: past their deadline, cancelled: before they ran).",
            labels=["host", "outcome"]),
        "batches": CounterMetricFamily(
            p + "batches", "predict_batch calls, by why the batch started (full, "
            "token_budget, model_idle, delay_elapsed, deadline, retry).",
            labels=["host", "reason"]),
        "batch_size": HistogramMetricFamily(
            p + "batch_size", "Requests per predict_batch call, by why the batch started.",
            labels=["host", "reason"]),
        "queue_wait": HistogramMetricFamily(
            p + "queue_wait_seconds", "Time from queueing to the start of the request's batch.",
            labels=host, unit="seconds"),
        "model_time": HistogramMetricFamily(
            p + "model_time_seconds", "Time of each predict_batch call.",
            labels=host, unit="seconds"),
        "efficiency": HistogramMetricFamily(
            p + "padding_efficiency_ratio", "Real tokens / padded tokens of each batch.",
            labels=host, unit="ratio"),
        "batch_tokens": HistogramMetricFamily(
            p + "batch_tokens", "Tokens the model computed per batch (with padding).",
            labels=host),
        "real_tokens": CounterMetricFamily(
            p + "real_tokens", "Tokens of the requests that ran (without padding).", labels=host),
        "padded_tokens": CounterMetricFamily(
            p + "padded_tokens", "Tokens the model computed (with padding).", labels=host),
        "busy": CounterMetricFamily(
            p + "model_busy_seconds", "Seconds spent in predict_batch calls (all workers).",
            labels=host, unit="seconds"),
        "queue_depth": GaugeMetricFamily(
            p + "queue_depth", "Requests waiting for a batch now.", labels=host),
        "batch_limit": GaugeMetricFamily(
            p + "max_batch_size", "The host's current max_batch_size "
            "(lowered after out-of-memory errors).", labels=host),
    }


def _add_samples(families: dict[str, Any], name: str, stats: HostStats) -> None:
    families["accepted"].add_metric([name], stats.requests)
    for outcome in _OUTCOMES:
        families["requests"].add_metric([name, outcome], getattr(stats, outcome))
    by_reason = stats.batch_sizes_by_reason
    for reason in (*BATCH_REASONS, *(r for r in by_reason if r not in BATCH_REASONS)):
        sizes = by_reason.get(reason, {})
        count = sum(sizes.values())
        families["batches"].add_metric([name, reason], count)
        buckets = [(_bound(bound), sum(n for size, n in sizes.items() if size <= bound))
                   for bound in BATCH_SIZE_BUCKETS]
        families["batch_size"].add_metric(
            [name, reason], [*buckets, ("+Inf", count)],
            sum_value=sum(size * n for size, n in sizes.items()))
    for key, histogram in (("queue_wait", stats.queue_wait_buckets_s),
                           ("model_time", stats.model_time_buckets_s),
                           ("efficiency", stats.padding_efficiency_buckets),
                           ("batch_tokens", stats.batch_tokens_buckets)):
        families[key].add_metric([name], _buckets(histogram), sum_value=histogram.sum)
    families["real_tokens"].add_metric([name], stats.real_tokens)
    families["padded_tokens"].add_metric([name], stats.padded_tokens)
    families["busy"].add_metric([name], stats.model_busy_s)
    families["queue_depth"].add_metric([name], stats.queue_depth)
    families["batch_limit"].add_metric([name], stats.batch_limit)


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    pairs = [(_bound(b), n) for b, n in zip(histogram.bounds, histogram.cumulative)]
    return [*pairs, ("+Inf", histogram.count)]


def _bound(value: float) -> str:
    return repr(float(value))
