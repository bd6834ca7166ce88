"""A replica's host stats, reported through Ray's own metrics (``ray.util.metrics``).

Ray collects what its workers record with ``ray.util.metrics`` and serves it,
in Prometheus' text format, on each node's metrics export port (``ray start
--metrics-export-port``, ``ray.init(_metrics_export_port=...)``), with a
``ray_`` prefix and Ray's own labels (``WorkerId``, ``NodeAddress``...).
:class:`RayStatsExporter` copies the families of
:class:`batch_inference.metrics.HostCollector` there, so one scrape of Ray
shows ``ray_batch_inference_requests_total`` and the rest beside Serve's own
``ray_serve_*`` metrics, labelled ``host`` (the deployment) and ``replica``.

Ray has no pull hook, so the copy is pushed: :meth:`RayStatsExporter.export`
adds to each Ray counter what the host's counter gained since the last call,
sets each gauge, and replays each histogram's new observations bucket by
bucket (the bucket counts are exact; the ``_sum`` counts every observation at
its bucket's upper bound, the overflow bucket's at the last finite bound). A
replica calls it every ``interval_s`` from a daemon thread, and once more when
it stops. Ray is imported only here, when a replica builds an exporter.
"""

from __future__ import annotations

import threading
from typing import Any

from ..metrics import HostCollector, StatsSource

__all__ = ["RayStatsExporter"]


class RayStatsExporter:
    """Copies one host's metric families into Ray's metrics, labelled ``host`` and ``replica``.

    Parameters
    ----------
    host:
        Anything with ``stats() -> HostStats``.
    name:
        The ``host`` label (the deployment's name).
    replica:
        The ``replica`` label (the replica's id).
    """

    def __init__(self, host: StatsSource, name: str, replica: str) -> None:
        self._collector = HostCollector(host, name)
        self._replica = replica
        self._metrics: dict[str, Any] = {}
        self._last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def export(self) -> None:
        """Push what changed since the last call (thread-safe)."""
        with self._lock:
            for family in self._collector.collect():
                if family.type == "histogram":
                    self._histogram(family)
                    continue
                for sample in family.samples:
                    tags = {**sample.labels, "replica": self._replica}
                    if family.type == "counter":
                        self._add(sample.name, family.documentation, tags, sample.value)
                    else:
                        self._gauge(sample.name, family.documentation, tags).set(
                            sample.value, tags=tags)

    def start(self, interval_s: float) -> RayStatsExporter:
        """Export every ``interval_s`` seconds from a daemon thread until :meth:`stop`."""
        def loop() -> None:
            while not self._stop.wait(interval_s):
                self.export()

        self._thread = threading.Thread(target=loop, name="batch_inference-ray-metrics",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread (waiting at most ``timeout_s``), then export a last time."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.export()

    # ------------------------------------------------------------------ the three kinds
    def _add(self, name: str, doc: str, tags: dict[str, str], value: float) -> None:
        key = (name, tuple(sorted(tags.items())))
        gained = value - self._last.get(key, 0.0)
        self._last[key] = value
        if gained > 0:
            self._counter(name, doc, tags).inc(gained, tags=tags)

    def _histogram(self, family: Any) -> None:
        by_labels: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                labels = {k: v for k, v in sample.labels.items() if k != "le"}
                by_labels.setdefault(tuple(sorted(labels.items())), []).append(
                    (float(sample.labels["le"]), sample.value))
        for labels, cumulative in by_labels.items():
            tags = {**dict(labels), "replica": self._replica}
            bounds = [bound for bound, _ in cumulative if bound != float("inf")]
            histogram = self._histogram_metric(family.name, family.documentation, tags, bounds)
            below = 0.0
            for bound, count in cumulative:
                key = (f"{family.name}_le_{bound}", tuple(sorted(tags.items())))
                in_bucket = count - below
                below = count
                new = int(in_bucket - self._last.get(key, 0.0))
                self._last[key] = in_bucket
                value = bound if bound != float("inf") else bounds[-1]
                for _ in range(max(new, 0)):
                    histogram.observe(value, tags=tags)

    def _counter(self, name: str, doc: str, tags: dict[str, str]) -> Any:
        from ray.util.metrics import Counter

        return self._metric(name, lambda: Counter(name, doc, tag_keys=tuple(tags)))

    def _gauge(self, name: str, doc: str, tags: dict[str, str]) -> Any:
        from ray.util.metrics import Gauge

        return self._metric(name, lambda: Gauge(name, doc, tag_keys=tuple(tags)))

    def _histogram_metric(self, name: str, doc: str, tags: dict[str, str],
                          bounds: list[float]) -> Any:
        from ray.util.metrics import Histogram

        return self._metric(name, lambda: Histogram(name, doc, boundaries=bounds,
                                                    tag_keys=tuple(tags)))

    def _metric(self, name: str, make: Any) -> Any:
        metric = self._metrics.get(name)
        if metric is None:
            metric = self._metrics[name] = make()
        return metric
