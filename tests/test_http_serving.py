"""The HTTP serving helpers: the FastAPI app, the load generator, the uvicorn subprocess.

The app runs in-process behind httpx's ASGI transport (its lifespan entered by
the test), except in the last test, which starts uvicorn in a subprocess on a
Unix socket and checks that it stops.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
fastapi = pytest.importorskip("fastapi")
torch = pytest.importorskip("torch")

from batch_inference.errors import ConfigurationError  # noqa: E402
from benchmarks.bert import make_queries, random_lengths  # noqa: E402
from benchmarks.http_app import (  # noqa: E402
    ServeSettings,
    create_app,
    sentence_embedding,
)
from benchmarks.http_load import http_load  # noqa: E402
from benchmarks.http_server import (  # noqa: E402
    RUNTIME_DIR_VARIABLE,
    ServerStartError,
    UvicornServer,
)

BOUND_S = 60.0  # no test's asyncio part may take longer than this


@asynccontextmanager
async def serving(app: Any, clients: int = 8) -> AsyncIterator[Any]:
    """An ``httpx.AsyncClient`` on ``app`` in this process, inside the app's lifespan."""
    async with app.router.lifespan_context(app):
        limits = httpx.Limits(max_connections=clients)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app",
                                     limits=limits) as client:
            yield client


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, BOUND_S))


@pytest.fixture(scope="module")
def queries(minilm: Any) -> list[tuple[Any, Any]]:
    return make_queries(random_lengths(12, 3, 40, seed=3), minilm.vocab_size, seed=3)


@pytest.fixture(scope="module")
def alone(minilm_embedding: Any, queries: list[tuple[Any, Any]]) -> list[np.ndarray]:
    """Each query's embedding, from the model on that query alone (no HTTP, no batching)."""
    return [np.asarray(sentence_embedding(minilm_embedding.predict_batch(*q))) for q in queries]


@pytest.fixture
def served_model(minilm: Any, minilm_embedding: Any) -> Any:
    return SimpleNamespace(predict_batch=minilm_embedding.predict_batch,
                           vocab_size=minilm.vocab_size)


def payloads_of(queries: list[tuple[Any, Any]]) -> list[dict[str, list[int]]]:
    return [{"input_ids": ids[0].tolist()} for ids, _ in queries]


@pytest.mark.parametrize("variant, batcher", [("direct", "bucket"), ("host", "bucket"),
                                              ("host", "seq")])
def test_every_client_gets_the_embedding_of_its_query_alone(
    variant: str, batcher: str, served_model: Any, queries: list, alone: list[np.ndarray]
) -> None:
    settings = ServeSettings(variant=variant, max_batch_size=8, batcher=batcher)
    app = create_app(settings, model=served_model)
    payloads = payloads_of(queries)

    async def go() -> Any:
        async with serving(app) as client:
            return await http_load(client, "/embed", payloads, clients=8,
                                   max_requests=3 * len(payloads), max_duration_s=BOUND_S,
                                   keep_outputs=True)

    result = run(go())
    assert result.stopped_by == "count" and result.requests == 3 * len(payloads)
    assert result.latencies_s.shape == (3 * len(payloads),)
    assert np.all(result.latencies_s > 0)
    for answer, expected in zip(result.outputs, alone, strict=True):
        assert answer["pid"] == os.getpid()
        np.testing.assert_allclose(answer["embedding"], expected, atol=1e-4, rtol=1e-4)


@pytest.mark.timeout(120)
def test_remote_variant_two_apps_share_one_model_and_answer_as_it_alone(
    queries: list, alone: list[np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("zmq")
    private = tmp_path / "remote"
    private.mkdir(mode=0o700)
    monkeypatch.setenv(RUNTIME_DIR_VARIABLE, str(private))  # no other test's port
    settings = ServeSettings(variant="remote", grpc_port=8611, max_batch_size=8)
    apps = [create_app(settings), create_app(settings)]  # as two worker processes would
    payloads = payloads_of(queries)

    async def go() -> list[Any]:
        async with serving(apps[0]) as first, serving(apps[1]) as second:
            roles = [app.state.backend.remote.is_server for app in apps]
            results = await asyncio.gather(*(
                http_load(client, "/embed", payloads, clients=4, max_requests=len(payloads),
                          max_duration_s=BOUND_S, keep_outputs=True)
                for client in (first, second)))
            return [roles, *results]

    roles, *results = run(go())
    assert sorted(roles) == [False, True]  # exactly one app serves the model
    for result in results:
        for answer, expected in zip(result.outputs, alone, strict=True):
            np.testing.assert_allclose(answer["embedding"], expected, atol=1e-4, rtol=1e-4)


def test_the_host_variant_batches_requests_that_wait_together(
    served_model: Any, queries: list
) -> None:
    entered, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def predict_batch(ids: Any, mask: Any) -> Any:
        calls.append(int(ids.shape[0]))
        if len(calls) == 1:  # the first call holds the model until the others wait
            entered.set()
            if not release.wait(BOUND_S):
                raise TimeoutError("the test never released the first call")
        return served_model.predict_batch(ids, mask)

    model = SimpleNamespace(predict_batch=predict_batch, vocab_size=served_model.vocab_size)
    app = create_app(ServeSettings(variant="host", max_batch_size=32, batcher="seq"), model=model)
    first, *rest = payloads_of(queries)

    async def go() -> list[Any]:
        async with serving(app, clients=len(queries)) as client:
            try:
                head = asyncio.ensure_future(client.post("/embed", json=first))
                assert await asyncio.to_thread(entered.wait, BOUND_S)
                tail = [asyncio.ensure_future(client.post("/embed", json=p)) for p in rest]
                # All are queued: no code signals it, so a bounded check every millisecond.
                async with asyncio.timeout(BOUND_S):
                    while app.state.host.stats().requests < len(queries):
                        await asyncio.sleep(0.001)
            finally:
                release.set()
            return await asyncio.gather(head, *tail)

    responses = run(go())
    assert all(r.status_code == 200 for r in responses)
    assert calls == [1, len(rest)]  # the eleven that waited together ran as one batch


def test_nothing_is_loaded_before_the_lifespan_starts() -> None:
    app = create_app(ServeSettings(model="no-such-model"))  # builds, loads nothing

    async def go() -> None:
        async with serving(app):
            pass

    with pytest.raises(ConfigurationError, match="no-such-model"):
        run(go())


def test_bad_requests_get_422_naming_the_bad_value(served_model: Any) -> None:
    app = create_app(ServeSettings(variant="host", max_length=8), model=served_model)
    too_big = served_model.vocab_size + 5

    async def go() -> list[Any]:
        async with serving(app) as client:
            return [await client.post("/embed", json=body) for body in
                    ({"input_ids": [101, too_big, 102]}, {"input_ids": list(range(9))},
                     {"input_ids": []}, {"tokens": [1]})]

    out_of_vocab, too_long, empty, wrong_key = run(go())
    assert out_of_vocab.status_code == 422 and str(too_big) in out_of_vocab.text
    assert too_long.status_code == 422 and "8" in too_long.text
    assert empty.status_code == 422 and wrong_key.status_code == 422


def _tiny_app(status: int = 200) -> Any:
    app = fastapi.FastAPI()

    @app.post("/echo")
    async def echo(body: dict) -> Any:
        if status != 200:
            raise fastapi.HTTPException(status, "refused")
        return body

    return app


def test_the_load_generator_stops_by_count() -> None:
    async def go() -> Any:
        async with serving(_tiny_app(), clients=4) as client:
            return await http_load(client, "/echo", [{"i": 0}, {"i": 1}, {"i": 2}], clients=4,
                                   max_requests=10, max_duration_s=BOUND_S, keep_outputs=True)

    result = run(go())
    assert (result.requests, result.stopped_by) == (10, "count")
    assert result.outputs == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert 0 < result.p50_s <= result.p99_s and result.requests_per_s > 0


def test_the_load_generator_stops_by_time_on_its_own() -> None:
    endless = 10**9  # never reached: only the time bound can stop this run

    async def go() -> Any:
        async with serving(_tiny_app(), clients=4) as client:
            return await http_load(client, "/echo", [{}], clients=4, max_requests=endless,
                                   max_duration_s=0.3)

    result = run(go())
    assert result.stopped_by == "time"
    assert 0 < result.requests < endless and result.wall_s >= 0.3


def test_the_load_generator_raises_the_first_failure_and_stops() -> None:
    async def go() -> Any:
        async with serving(_tiny_app(status=503), clients=4) as client:
            return await http_load(client, "/echo", [{}], clients=4, max_requests=100,
                                   max_duration_s=BOUND_S)

    with pytest.raises(httpx.HTTPStatusError, match="503"):
        run(go())


@pytest.mark.parametrize("bad, named", [({"clients": 0}, "clients must be > 0, got 0"),
                                        ({"max_requests": 0}, "max_requests must be > 0"),
                                        ({"max_duration_s": -1.0}, "got -1.0"),
                                        ({"request_timeout_s": 0}, "request_timeout_s"),
                                        ({"payloads": []}, "payloads")])
def test_the_load_generator_refuses_bad_bounds(bad: dict[str, Any], named: str) -> None:
    arguments: dict[str, Any] = {"client": None, "path": "/x", "payloads": [{}], "clients": 1,
                                 "max_requests": 1, "max_duration_s": 1.0, **bad}
    with pytest.raises(ConfigurationError, match=named):
        run(http_load(**arguments))


@pytest.mark.parametrize("bad, named", [({"variant": "cluster"}, "cluster"),
                                        ({"max_batch_size": 0}, "max_batch_size"),
                                        ({"batcher": "sorted"}, "sorted"),
                                        ({"direct_threads": True}, "direct_threads")])
def test_settings_refuse_bad_values(bad: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        ServeSettings(**bad)


def test_settings_round_trip_through_json() -> None:
    settings = ServeSettings(variant="direct", model="bert-base", max_batch_size=4)
    assert ServeSettings.from_json(settings.to_json()) == settings
    with pytest.raises(ConfigurationError, match="colour"):
        ServeSettings.from_json('{"colour": "red"}')


def test_server_workers_must_be_positive() -> None:
    with pytest.raises(ConfigurationError, match="workers must be an integer >= 1, got 0"):
        UvicornServer(ServeSettings(), workers=0)


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("variant, workers", [("host", 1), ("remote", 2)])
def test_uvicorn_subprocess_serves_on_a_unix_socket_and_stops(
    variant: str, workers: int, queries: list, alone: list[np.ndarray]
) -> None:
    payloads = payloads_of(queries)
    server = UvicornServer(ServeSettings(variant=variant), workers=workers, start_timeout_s=200)
    with server:
        socket_path = Path(server.uds)
        assert socket_path.is_socket() and oct(socket_path.parent.stat().st_mode)[-3:] == "700"
        pids = server.worker_pids
        assert len(pids) == workers and os.getpid() not in pids

        async def go() -> Any:
            transport = httpx.AsyncHTTPTransport(uds=server.uds)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                health = (await client.get("/health")).json()
                result = await http_load(client, "/embed", payloads, clients=4,
                                         max_requests=len(payloads), max_duration_s=BOUND_S,
                                         keep_outputs=True)
                return health, result

        health, result = run(go())
        assert health["pid"] in pids and "minilm" in health["weights"].lower()
        for answer, expected in zip(result.outputs, alone, strict=True):
            assert answer["pid"] in pids
            np.testing.assert_allclose(answer["embedding"], expected, atol=1e-4, rtol=1e-4)
    assert not server.running and not socket_path.exists()
    for pid in pids:  # every worker process has exited
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_server_that_cannot_start_raises_with_its_log() -> None:
    server = UvicornServer(ServeSettings(model="no-such-model"), start_timeout_s=150)
    with pytest.raises(ServerStartError, match="no-such-model"), server:
        pass
    assert not server.running


def _serving_snippets() -> list[str]:
    page = (Path(__file__).resolve().parents[1] / "docs" / "serving.md").read_text()
    return re.findall(r"^```python\n(.*?)^```", page, flags=re.M | re.S)


def test_the_serving_page_snippet_starts_and_stops_its_host_in_the_lifespan(
    capsys: pytest.CaptureFixture[str],
) -> None:
    snippet = _serving_snippets()[0]
    assert "lifespan=lifespan" in snippet
    namespace: dict[str, Any] = {"__name__": "__snippet__"}
    exec(compile(snippet, "docs/serving.md#0", "exec"), namespace)
    host = namespace["app"].state.host  # set by the lifespan the TestClient ran
    assert host.stats().completed == 1 and not host.running  # served once, then stopped
    assert capsys.readouterr().out.strip() == "[2.0, 4.0]"


@pytest.mark.timeout(60)
def test_the_serving_page_remote_snippet_serves_and_stops(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("zmq")
    private = tmp_path / "remote"
    private.mkdir(mode=0o700)
    monkeypatch.setenv(RUNTIME_DIR_VARIABLE, str(private))  # no other process's port
    snippet = _serving_snippets()[1]
    assert "AsyncRemoteModelHost" in snippet and "lifespan=lifespan" in snippet
    namespace: dict[str, Any] = {"__name__": "__snippet__"}
    exec(compile(snippet, "docs/serving.md#1", "exec"), namespace)
    assert not namespace["app"].state.host.sync_host.running  # stopped by the lifespan
    assert capsys.readouterr().out.split() == ["[2.0,", "4.0]", "True"]
