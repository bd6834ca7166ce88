"""Prometheus metrics: the collector over host.stats(), the app's /metrics, one remote host.

Every scrape is parsed with prometheus-client's own parsers (the text format's
and OpenMetrics'). Batches are made to start for each reason by the order of
events (arrivals, a deadline, a fixed delay), never by timing windows.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

prometheus_client = pytest.importorskip("prometheus_client")
torch = pytest.importorskip("torch")

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.openmetrics.parser import (  # noqa: E402
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from batch_inference import HostStats  # noqa: E402
from batch_inference.batcher import ConcatBatcher  # noqa: E402
from batch_inference.errors import ConfigurationError, WireFormatError  # noqa: E402
from batch_inference.metrics import HostCollector, register  # noqa: E402
from batch_inference.stats import BATCH_REASONS, TIME_BUCKETS_S, StatsRecorder  # noqa: E402

BOUND_S = 60.0

#: name (as the text format's parser reports it) -> type
FAMILIES = {
    "batch_inference_requests_accepted": "counter",
    "batch_inference_requests": "counter",
    "batch_inference_batches": "counter",
    "batch_inference_batch_size": "histogram",
    "batch_inference_queue_wait_seconds": "histogram",
    "batch_inference_model_time_seconds": "histogram",
    "batch_inference_padding_efficiency_ratio": "histogram",
    "batch_inference_batch_tokens": "histogram",
    "batch_inference_real_tokens": "counter",
    "batch_inference_padded_tokens": "counter",
    "batch_inference_model_busy_seconds": "counter",
    "batch_inference_queue_depth": "gauge",
    "batch_inference_max_batch_size": "gauge",
}


def scrape(registry: CollectorRegistry) -> dict[str, Any]:
    """The registry's families, parsed from the text format."""
    text = generate_latest(registry).decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample(families: dict[str, Any], name: str, **labels: str) -> float:
    """The one sample called ``name`` (a family's, or a histogram's ``_count``...)."""
    values = [s.value for family in families.values() for s in family.samples
              if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(values) == 1, (name, labels, values)
    return values[0]


def one_row() -> torch.Tensor:
    return torch.ones((1, 2))


class Doubler:
    def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


# ---------------------------------------------------------------------- import boundary
def test_importing_the_package_does_not_import_prometheus_client() -> None:
    code = ("import sys, batch_inference, batch_inference.host; "
            "assert 'prometheus_client' not in sys.modules, 'imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=BOUND_S, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------------- HostStats buckets
def test_the_recorder_keeps_cumulative_buckets_and_sizes_by_reason() -> None:
    recorder = StatsRecorder()
    recorder.batch(2, real=6, padded=8, waits=[0.0004, 0.003], model_s=0.02, retry=False,
                   reason="full")
    recorder.batch(1, real=4, padded=4, waits=[40.0], model_s=0.2, retry=False,
                   reason="deadline")
    recorder.batch(1, real=3, padded=4, waits=(), model_s=0.002, retry=True, reason="full")
    stats = recorder.snapshot(requests=3, queue_depth=0, batch_limit=8)
    wait = stats.queue_wait_buckets_s
    assert wait.bounds == TIME_BUCKETS_S and wait.count == 3  # retries add no wait
    assert wait.sum == pytest.approx(40.0034)
    le = dict(zip(wait.bounds, wait.cumulative))
    assert (le[0.0005], le[0.0025], le[0.005], le[30.0]) == (1, 1, 2, 2)  # 40 s: +Inf only
    model = dict(zip(stats.model_time_buckets_s.bounds, stats.model_time_buckets_s.cumulative))
    assert (model[0.0025], model[0.025], model[0.25]) == (1, 2, 3)
    efficiency = stats.padding_efficiency_buckets
    assert efficiency.count == 3 and efficiency.sum == pytest.approx(0.75 + 1.0 + 0.75)
    assert dict(zip(efficiency.bounds, efficiency.cumulative))[0.8] == 2
    tokens = stats.batch_tokens_buckets
    assert (tokens.count, tokens.sum) == (3, 16.0)
    assert dict(zip(tokens.bounds, tokens.cumulative))[4.0] == 2  # 4, 4 (then 8)
    assert stats.batch_sizes_by_reason["full"] == {2: 1}
    assert stats.batch_sizes_by_reason["retry"] == {1: 1}  # a retry is labelled retry
    assert stats.batch_sizes == {1: 2, 2: 1}  # every reason together
    assert stats.batches_by_reason == {"full": 1, "token_budget": 0, "model_idle": 0,
                                       "delay_elapsed": 0, "deadline": 1, "retry": 1}
    assert stats.batch_limit == 8


def test_a_new_hosts_stats_have_empty_buckets_for_every_reason(make_host: Any) -> None:
    stats = make_host(model_obj=Doubler()).stats()
    assert set(stats.batch_sizes_by_reason) == set(BATCH_REASONS)
    assert stats.queue_wait_buckets_s.cumulative == (0,) * len(TIME_BUCKETS_S)
    assert stats.batch_limit == 32


# ---------------------------------------------------------------------- every reason, scraped
@pytest.mark.timeout(120)
def test_each_batch_is_labelled_with_why_it_started(make_host: Any) -> None:
    batcher = ConcatBatcher(tensor="pt")
    # A delay far longer than the test: only count, tokens and deadlines start its batches.
    held = make_host(model_obj=Doubler(), batcher=batcher, max_batch_size=4,
                     max_batch_tokens=100, max_delay_s=600.0)
    idle = make_host(model_obj=Doubler(), batcher=batcher)  # no delay: whatever waits goes
    delayed = make_host(model_obj=Doubler(), batcher=batcher, max_delay_s=0.01)
    registry = CollectorRegistry()
    for name, host in (("held", held), ("idle", idle), ("delayed", delayed)):
        register(host, name, registry)

    # full: the fourth arrival fills the batch.
    for future in [held.submit(one_row()) for _ in range(4)]:
        future.result(BOUND_S)
    # token_budget: 60 rows wait; 50 more would pass 100 tokens, so the 60 go alone.
    big = held.submit(torch.ones((60, 2)))
    rest = held.submit(torch.ones((50, 2)))
    big.result(BOUND_S)
    # deadline: a request that must start within 30 s joins the 50 rows; both go at once.
    urgent = held.submit(one_row(), timeout=30.0)
    assert urgent.result(BOUND_S).shape == (1, 2) and rest.result(BOUND_S).shape == (50, 2)
    idle.predict(one_row())  # model_idle
    delayed.predict(one_row())  # delay_elapsed: nothing else could start it

    families = scrape(registry)
    expected = {"held": {"full": 1, "token_budget": 1, "deadline": 1},
                "idle": {"model_idle": 1}, "delayed": {"delay_elapsed": 1}}
    for name, host in (("held", held), ("idle", idle), ("delayed", delayed)):
        by_reason = host.stats().batches_by_reason
        for reason in BATCH_REASONS:
            want = expected[name].get(reason, 0)
            assert by_reason[reason] == want, (name, reason)
            assert sample(families, "batch_inference_batches_total",
                          host=name, reason=reason) == want
    # Each batch's size is in the histogram of its reason.
    assert sample(families, "batch_inference_batch_size_sum", host="held", reason="full") == 4
    assert sample(families, "batch_inference_batch_size_sum", host="held",
                  reason="token_budget") == 1
    assert sample(families, "batch_inference_batch_size_bucket", host="held",
                  reason="deadline", le="2.0") == 1


def test_a_deadline_shorter_than_the_delay_is_met_not_missed(make_host: Any) -> None:
    # Before start reasons, a lone request waited the whole delay and then timed out.
    host = make_host(model_obj=Doubler(), batcher=ConcatBatcher(tensor="pt"),
                     max_delay_s=600.0)
    assert host.predict(one_row(), timeout=20.0).shape == (1, 2)
    assert host.stats().batches_by_reason["deadline"] == 1


def test_hosts_in_one_registry_share_families_and_names_are_unique(make_host: Any) -> None:
    registry = CollectorRegistry()
    first, second = make_host(model_obj=Doubler()), make_host(model_obj=Doubler())
    collector = register(first, "a", registry)
    assert register(second, "b", registry) is collector
    with pytest.raises(ConfigurationError, match="'a'"):
        register(second, "a", registry)
    with pytest.raises(ConfigurationError, match="''"):
        HostCollector(first, "")
    with pytest.raises(ConfigurationError, match="stats"):
        collector.add(object(), "c")  # type: ignore[arg-type]
    hosts = {s.labels["host"] for s in scrape(registry)["batch_inference_batches"].samples}
    assert hosts == {"a", "b"}
    collector.remove("b")
    assert collector.names == ("a",)


def test_registering_in_the_default_registry_never_reads_stats() -> None:
    class Unread:
        def stats(self) -> HostStats:
            raise AssertionError("stats() read at registration")

    collector = HostCollector(Unread(), "unread")
    registry = CollectorRegistry(auto_describe=True)  # as prometheus_client.REGISTRY is
    registry.register(collector)
    registry.unregister(collector)


# ---------------------------------------------------------------------- the app's /metrics
def embedding_model() -> Any:
    """A stand-in for BERT: the hidden state is the token ids, four wide."""
    def predict_batch(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (ids * mask).unsqueeze(-1).float().repeat(1, 1, 4)

    return SimpleNamespace(predict_batch=predict_batch, vocab_size=1000)


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, BOUND_S))


@pytest.mark.timeout(120)
def test_the_apps_metrics_endpoint_reports_the_hosts_stats() -> None:
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from benchmarks.http_app import METRICS_HOST, ServeSettings, create_app

    app = create_app(ServeSettings(variant="host", max_batch_size=8), model=embedding_model())
    rng = np.random.default_rng(0)
    bodies = [{"input_ids": rng.integers(1, 999, size=int(n)).tolist()}
              for n in rng.integers(3, 60, size=40)]

    async def go() -> tuple[str, str, HostStats]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                answers = await asyncio.gather(*(client.post("/embed", json=b) for b in bodies))
                assert all(a.status_code == 200 for a in answers)
                text = await client.get("/metrics")
                om = await client.get("/metrics", headers={
                    "Accept": "application/openmetrics-text; version=1.0.0"})
                assert text.headers["content-type"].startswith("text/plain")
                assert om.headers["content-type"].startswith("application/openmetrics-text")
                return text.text, om.text, app.state.host.stats()

    text, om_text, stats = run(go())
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {name: f.type for name, f in families.items()} == FAMILIES
    labels = {"host": METRICS_HOST}
    assert stats.completed == len(bodies)
    assert sample(families, "batch_inference_requests_accepted_total", **labels) == len(bodies)
    for outcome in ("completed", "failed", "timed_out", "cancelled"):
        assert sample(families, "batch_inference_requests_total", outcome=outcome,
                      **labels) == getattr(stats, outcome)
    for reason, count in stats.batches_by_reason.items():
        assert sample(families, "batch_inference_batches_total", reason=reason,
                      **labels) == count
    assert sum(sample(families, "batch_inference_batch_size_sum", reason=r, **labels)
               for r in BATCH_REASONS) == len(bodies)  # every request ran in one batch
    assert sample(families, "batch_inference_queue_wait_seconds_count", **labels) == len(bodies)
    assert sample(families, "batch_inference_model_time_seconds_count", **labels) == stats.batches
    assert sample(families, "batch_inference_padding_efficiency_ratio_count",
                  **labels) == stats.batches
    assert sample(families, "batch_inference_batch_tokens_sum", **labels) == stats.padded_tokens
    assert sample(families, "batch_inference_real_tokens_total", **labels) == stats.real_tokens
    assert sample(families, "batch_inference_padded_tokens_total",
                  **labels) == stats.padded_tokens
    assert sample(families, "batch_inference_queue_depth", **labels) == 0
    assert sample(families, "batch_inference_max_batch_size", **labels) == 8
    # Histogram buckets are cumulative and end at the count.
    waits = [s for s in families["batch_inference_queue_wait_seconds"].samples
             if s.name.endswith("_bucket")]
    assert [s.value for s in waits] == sorted(s.value for s in waits)
    assert waits[-1].labels["le"] == "+Inf" and waits[-1].value == len(bodies)
    # OpenMetrics carries the units.
    units = {f.name: f.unit for f in openmetrics_families(om_text)}
    assert units["batch_inference_queue_wait_seconds"] == "seconds"
    assert units["batch_inference_model_time_seconds"] == "seconds"
    assert units["batch_inference_model_busy_seconds"] == "seconds"
    assert units["batch_inference_padding_efficiency_ratio"] == "ratio"


def test_the_unbatched_variant_has_no_host_to_report() -> None:
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from benchmarks.http_app import ServeSettings, create_app

    app = create_app(ServeSettings(variant="direct"), model=embedding_model())

    async def go() -> Any:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                return await client.get("/metrics")

    response = run(go())
    assert response.status_code == 200 and "batch_inference_" not in response.text


# ---------------------------------------------------------------------- one remote host
@pytest.mark.timeout(120)
def test_every_process_of_a_remote_host_reports_the_one_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("zmq")
    from _remote_support import Doubler as RemoteDoubler
    from _remote_support import remote

    private = tmp_path / "remote"
    private.mkdir(mode=0o700)
    monkeypatch.setenv("BATCH_INFERENCE_RUNTIME_DIR", str(private))
    hosts = [remote(RemoteDoubler, 8631) for _ in range(3)]
    try:
        for host in hosts:
            host.start()
        assert [h.is_server for h in hosts] == [True, False, False]
        for count, host in zip((2, 3, 4), hosts):
            for future in [host.submit(one_row()) for _ in range(count)]:
                future.result(BOUND_S)
        seen = [host.stats(timeout=BOUND_S) for host in hosts]
        assert seen[0].completed == 9 and seen[0].requests == 9
        assert seen[1] == seen[0] and seen[2] == seen[0]  # a client reports the server's host
        registries = [CollectorRegistry() for _ in hosts]
        for host, registry in zip(hosts, registries):
            register(host, "shared", registry)
        for registry in registries:  # each process's /metrics: the same one host
            families = scrape(registry)
            assert sample(families, "batch_inference_requests_total", host="shared",
                          outcome="completed") == 9
    finally:
        for host in reversed(hosts):
            host.stop()


def test_stats_cross_the_wire_as_json_and_malformed_ones_are_refused() -> None:
    import json

    from batch_inference.remote._wire_stats import decode_stats, encode_stats

    recorder = StatsRecorder()
    recorder.batch(3, real=9, padded=12, waits=[0.01, 0.02, 0.03], model_s=0.05, retry=False,
                   reason="token_budget")
    stats = recorder.snapshot(requests=3, queue_depth=1, batch_limit=16)
    assert decode_stats(json.loads(json.dumps(encode_stats(stats)))) == stats
    for bad in ([], {"requests": "3"}, {"batch_sizes": {"1": 2}},
                {"queue_wait_buckets_s": {"bounds": 1}}, {"queue_wait_s": {"p50": "x"}}):
        with pytest.raises(WireFormatError, match="malformed stats"):
            decode_stats(bad)
