"""batch_inference.ray._metrics without Ray: what a replica pushes into Ray's metrics.

``ray.util.metrics`` is replaced by a recorder of the calls it gets, so the
arithmetic (counter gains, gauges, histogram replays) is checked exactly; the
live path through Ray's endpoint is tests/test_ray_serve.py's.
"""

from __future__ import annotations

import sys
import types
from collections import Counter as Tally
from typing import Any

import pytest

pytest.importorskip("prometheus_client")

from batch_inference.errors import ConfigurationError  # noqa: E402
from batch_inference.ray._metrics import RayStatsExporter  # noqa: E402
from batch_inference.ray._settings import check_interval  # noqa: E402
from batch_inference.stats import StatsRecorder  # noqa: E402


class _Metric:
    def __init__(self, name: str, description: str = "", boundaries: Any = None,
                 tag_keys: tuple[str, ...] = ()) -> None:
        self.name, self.boundaries, self.tag_keys = name, boundaries, tag_keys
        self.total: Tally[tuple] = Tally()
        self.value: dict[tuple, float] = {}
        self.observed: list[tuple[float, tuple]] = []

    @staticmethod
    def _key(tags: dict[str, str]) -> tuple:
        return tuple(sorted(tags.items()))

    def inc(self, value: float, tags: dict[str, str]) -> None:
        assert set(tags) == set(self.tag_keys)
        self.total[self._key(tags)] += value

    def set(self, value: float, tags: dict[str, str]) -> None:
        self.value[self._key(tags)] = value

    def observe(self, value: float, tags: dict[str, str]) -> None:
        self.observed.append((value, self._key(tags)))


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> dict[str, _Metric]:
    made: dict[str, _Metric] = {}

    def factory(name: str, *args: Any, **kwargs: Any) -> _Metric:
        assert name not in made, f"{name} made twice"
        made[name] = _Metric(name, *args, **kwargs)
        return made[name]

    module = types.ModuleType("ray.util.metrics")
    module.Counter = module.Gauge = module.Histogram = factory  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ray", types.ModuleType("ray"))
    monkeypatch.setitem(sys.modules, "ray.util", types.ModuleType("ray.util"))
    monkeypatch.setitem(sys.modules, "ray.util.metrics", module)
    return made


class _Host:
    def __init__(self) -> None:
        self.recorder = StatsRecorder()
        self.depth = 0

    def stats(self) -> Any:
        return self.recorder.snapshot(requests=0, queue_depth=self.depth, batch_limit=8)

    def run(self, size: int, wait_s: float, reason: str = "full") -> None:
        self.recorder.batch(size=size, real=size, padded=size, waits=[wait_s] * size,
                            model_s=0.003, retry=False, reason=reason)
        self.recorder.count("completed", size)


def test_counters_gain_only_what_the_host_gained_between_exports(made):
    host = _Host()
    exporter = RayStatsExporter(host, "Embedder", "r1")
    host.run(8, 0.002)
    exporter.export()
    exporter.export()  # nothing new: nothing added
    host.run(3, 0.002, reason="model_idle")
    exporter.export()
    requests = made["batch_inference_requests_total"]
    completed = {k: v for k, v in requests.total.items() if ("outcome", "completed") in k}
    assert list(completed.values()) == [11]
    assert set(requests.tag_keys) == {"host", "outcome", "replica"}
    assert ("host", "Embedder") in next(iter(completed)) and ("replica", "r1") in next(
        iter(completed))
    batches = made["batch_inference_batches_total"].total
    by_reason = {dict(k)["reason"]: v for k, v in batches.items()}
    assert by_reason == {"full": 1, "model_idle": 1}


def test_histograms_replay_each_new_observation_in_its_own_bucket(made):
    host = _Host()
    exporter = RayStatsExporter(host, "Embedder", "r1")
    host.run(8, 0.002)
    exporter.export()
    host.run(3, 0.02)
    exporter.export()
    sizes = made["batch_inference_batch_size"]
    assert sorted(value for value, _ in sizes.observed) == [4.0, 8.0]  # sizes 3 and 8
    waits = made["batch_inference_queue_wait_seconds"]
    assert Tally(value for value, _ in waits.observed) == {0.0025: 8, 0.025: 3}
    assert waits.boundaries[0] > 0


def test_gauges_are_set_to_the_current_value(made):
    host = _Host()
    exporter = RayStatsExporter(host, "Embedder", "r1")
    host.depth = 5
    exporter.export()
    host.depth = 2
    exporter.export()
    assert list(made["batch_inference_queue_depth"].value.values()) == [2]


def test_stop_exports_once_more_after_the_thread_ends(made):
    host = _Host()
    exporter = RayStatsExporter(host, "Embedder", "r1").start(interval_s=3600.0)
    host.run(4, 0.002)
    exporter.stop(timeout_s=10.0)
    completed = made["batch_inference_requests_total"].total
    assert sum(v for k, v in completed.items() if ("outcome", "completed") in k) == 4


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), "5", True])
def test_a_bad_interval_is_refused_naming_it(bad: Any):
    with pytest.raises(ConfigurationError, match=repr(bad).replace("(", r"\(")):
        check_interval(bad)


def test_no_interval_means_no_export():
    assert check_interval(None) is None
    assert check_interval(2) == 2.0
