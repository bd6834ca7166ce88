"""The OpenAI-shaped completions app (benchmarks.completions_app) and its SSE load client.

Most tests run the app in this process behind httpx's ASGI transport (its
lifespan entered by the test; the transport reads a streamed body whole). The
disconnect test serves it with uvicorn on a Unix socket in a thread of this
process, so a client can really leave mid-stream while the test holds the
model at a known step (events, no sleeps).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from _generation_support import POSITIONS, VOCAB, prompts, tiny_gpt2  # noqa: E402

from batch_inference.errors import ConfigurationError  # noqa: E402
from benchmarks.completions_app import (  # noqa: E402
    CompletionsSettings,
    create_app,
)
from benchmarks.sse_load import StreamError, read_events, sse_load  # noqa: E402

BOUND_S = 60.0  # no test's asyncio part may take longer than this
COUNTING_VOCAB = 50


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, BOUND_S))


@contextlib.asynccontextmanager
async def serving(app: Any, clients: int = 8) -> AsyncIterator[Any]:
    """An ``httpx.AsyncClient`` on ``app`` in this process, inside the app's lifespan."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app",
                                     limits=httpx.Limits(max_connections=clients)) as client:
            yield client


class CountingBatch:
    """Each row's latest token: all a :class:`CountingModel` needs."""

    def __init__(self, last: Sequence[int]) -> None:
        self.last = list(last)

    def __len__(self) -> int:
        return len(self.last)

    def filter(self, rows: Sequence[int]) -> CountingBatch:
        return CountingBatch([self.last[i] for i in rows])

    @classmethod
    def concatenate(cls, batches: Sequence[CountingBatch]) -> CountingBatch:
        return cls([t for b in batches for t in b.last])


class CountingModel:
    """A step-wise model whose next token is ``(last + 1) % 50``; it counts its steps.

    Its step number ``gate_at`` sets ``entered`` and waits for ``release``.
    """

    vocab_size = COUNTING_VOCAB
    max_positions = None

    def __init__(self, gate_at: int | None = None) -> None:
        self.gate_at = gate_at
        self.entered, self.release = threading.Event(), threading.Event()
        self.step_rows: list[int] = []

    @staticmethod
    def _logits(last: Sequence[int]) -> Any:
        following = torch.tensor([(t + 1) % COUNTING_VOCAB for t in last])
        return torch.nn.functional.one_hot(following, COUNTING_VOCAB).double()

    def prefill(self, prompts: Sequence[Sequence[int]]) -> tuple[CountingBatch, Any]:
        last = [p[-1] for p in prompts]
        return CountingBatch(last), self._logits(last)

    def step(self, batch: CountingBatch, tokens: Sequence[int]) -> tuple[CountingBatch, Any]:
        if len(self.step_rows) == self.gate_at:
            self.entered.set()
            if not self.release.wait(BOUND_S):
                raise TimeoutError("the test never released the gate")
        self.step_rows.append(len(tokens))
        return CountingBatch(tokens), self._logits(tokens)


@pytest.fixture(scope="module")
def model() -> Any:
    return tiny_gpt2()


def test_the_stream_gives_each_request_the_tokens_of_generate(model: Any) -> None:
    """Four streams at once (batched together) each get what host.generate gives alone."""
    app = create_app(CompletionsSettings(max_batch_size=4), model=model)
    asked = list(zip(prompts([3, 9, 1, 6], seed=5), [7, 3, 12, 5]))

    async def go() -> tuple[list[Any], list[list[int]]]:
        async with serving(app) as client:
            async def one(prompt: list[int], count: int) -> list[dict]:
                response = await client.post("/v1/completions", json={
                    "prompt": prompt, "max_tokens": count, "stream": True})
                assert response.headers["content-type"].startswith("text/event-stream")
                return [e async for e in read_events(response)]

            streamed = await asyncio.gather(*(one(p, n) for p, n in asked))
            alone = [await asyncio.to_thread(app.state.host.generate, p, n, timeout=BOUND_S)
                     for p, n in asked]
            return streamed, alone

    streamed, alone = run(go())
    for events, expected, (_, count) in zip(streamed, alone, asked, strict=True):
        assert len(expected) == count
        assert [e["choices"][0]["token_ids"] for e in events] == [[t] for t in expected]
        assert [e["choices"][0]["text"] for e in events] == [f" {t}" for t in expected]
        assert [e["choices"][0]["finish_reason"] for e in events] == [None] * (count - 1) + [
            "length"]
        assert len({e["id"] for e in events}) == 1 and events[0]["object"] == "text_completion"


def test_the_json_answer_has_the_completions_shape_and_stops_at_eos() -> None:
    app = create_app(CompletionsSettings(), model=CountingModel(), eos_token_id=7)

    async def go() -> list[Any]:
        async with serving(app) as client:
            answers = []
            for body in ({"prompt": [3, 4], "max_tokens": 10}, {"prompt": [20], "max_tokens": 2}):
                response = await client.post("/v1/completions", json=body)
                assert response.status_code == 200, response.text
                answers.append(response.json())
            answers.append((await client.get("/health")).json())
            return answers

    stopped, capped, health = run(go())
    assert set(stopped) == {"id", "object", "created", "model", "choices", "usage"}
    assert stopped["object"] == "text_completion" and stopped["id"].startswith("cmpl-")
    assert stopped["choices"] == [{"index": 0, "text": " 5 6 7", "token_ids": [5, 6, 7],
                                   "logprobs": None, "finish_reason": "stop"}]
    assert stopped["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert capped["choices"][0]["token_ids"] == [21, 22]
    assert capped["choices"][0]["finish_reason"] == "length"
    assert health["stats"]["completed"] == 2 and health["active"] == 0
    assert health["vocab_size"] == COUNTING_VOCAB


BAD = [
    ({"prompt": [1], "temperature": -0.5}, 422, "-0.5"),
    ({"prompt": [1], "top_p": 1.5}, 422, "1.5"),
    ({"prompt": [1], "max_tokens": 0}, 422, "max_tokens"),
    ({"prompt": []}, 422, "prompt"),
    ({"prompt": ["a"]}, 422, '"a"'),
    ({"prompt": [1], "n": 2}, 422, '"n"'),
    ({"prompt": [1, VOCAB + 3]}, 400, str(VOCAB + 3)),
    ({"prompt": [1] * (POSITIONS - 4), "max_tokens": 10}, 400, "10"),
]


@pytest.mark.parametrize("body, status, named", BAD)
def test_bad_values_get_400_or_422_naming_the_value(
    model: Any, body: dict, status: int, named: str
) -> None:
    app = create_app(CompletionsSettings(), model=model)

    async def go() -> list[Any]:
        async with serving(app) as client:
            return [await client.post("/v1/completions", json={**body, "stream": stream})
                    for stream in (False, True)]

    for response in run(go()):
        assert response.status_code == status, response.text
        assert named in response.text


def test_sampling_values_reach_the_host(model: Any) -> None:
    """A seeded, sampled stream gets what host.generate gives with the same values."""
    app = create_app(CompletionsSettings(), model=model)
    values = {"temperature": 1.5, "top_p": 0.9, "seed": 11}
    prompt = prompts([4], seed=8)[0]

    async def go() -> tuple[list[int], list[int], list[int]]:
        async with serving(app) as client:
            response = await client.post("/v1/completions", json={
                "prompt": prompt, "max_tokens": 12, "stream": True, **values})
            assert response.status_code == 200, response.text
            streamed = [t for e in [e async for e in read_events(response)]
                        for t in e["choices"][0]["token_ids"]]
            sampled = await asyncio.to_thread(app.state.host.generate, prompt, 12,
                                              timeout=BOUND_S, **values)
            greedy = await asyncio.to_thread(app.state.host.generate, prompt, 12,
                                             timeout=BOUND_S)
            return streamed, sampled, greedy

    streamed, sampled, greedy = run(go())
    assert streamed == sampled and streamed != greedy


@contextlib.contextmanager
def uvicorn_on_a_socket(app: Any, wait_until: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a Unix socket, in a thread of this process."""
    with tempfile.TemporaryDirectory(prefix="bi-sse-") as folder:
        path = str(Path(folder) / "app.sock")
        server = uvicorn.Server(uvicorn.Config(app, uds=path, log_level="warning",
                                               lifespan="on"))
        thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
        thread.start()
        try:
            wait_until(lambda: server.started or not thread.is_alive(), timeout_s=BOUND_S)
            assert server.started, "uvicorn did not start"
            yield path
        finally:
            server.should_exit = True
            thread.join(BOUND_S)
    assert not thread.is_alive()


def test_a_client_that_disconnects_mid_stream_frees_its_row(wait_until: Any) -> None:
    """max_batch_size=1: the next request runs only once the leaver's row is freed."""
    counting = CountingModel(gate_at=2)
    app = create_app(CompletionsSettings(max_batch_size=1), model=counting)

    async def go(path: str) -> tuple[list[int], dict, dict]:
        transport = httpx.AsyncHTTPTransport(uds=path)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            received: list[int] = []
            async with client.stream("POST", "/v1/completions", json={
                    "prompt": [1], "max_tokens": 10_000, "stream": True}) as response:
                async for event in read_events(response):
                    received += event["choices"][0]["token_ids"]
                    if counting.entered.is_set():
                        break  # the model is held at step 2: leave mid-stream
            # The connection is closed: the server notices and cancels the request.
            await asyncio.to_thread(wait_until, lambda: app.state.active == 0, BOUND_S)
            counting.release.set()
            answer = (await client.post("/v1/completions", json={
                "prompt": [10], "max_tokens": 3}, timeout=BOUND_S)).json()
            health = (await client.get("/health")).json()
            return received, answer, health

    try:
        with uvicorn_on_a_socket(app, wait_until) as path:
            received, answer, health = run(go(path))
    finally:
        counting.release.set()
    assert received == list(range(2, 2 + len(received))) and len(received) >= 1
    assert answer["choices"][0]["token_ids"] == [11, 12, 13]
    # The leaver's row took steps 0 to 2 (the held one finishes), then left; the next
    # request took 2 steps (its first token comes from its prefill).
    assert counting.step_rows == [1] * 5
    assert health["stats"]["cancelled"] == 1 and health["stats"]["completed"] == 1


def test_the_load_client_streams_every_request_and_stops_by_count(model: Any) -> None:
    app = create_app(CompletionsSettings(max_batch_size=4), model=model)
    payloads = [{"prompt": p, "max_tokens": 4} for p in prompts([2, 5, 3], seed=2)]

    async def go() -> Any:
        async with serving(app, clients=3) as client:
            result = await sse_load(client, payloads, clients=3, max_requests=6,
                                    max_duration_s=BOUND_S, keep_outputs=True)
            alone = [await asyncio.to_thread(app.state.host.generate, b["prompt"], 4,
                                             timeout=BOUND_S) for b in payloads]
            return result, alone

    result, alone = run(go())
    assert result.stopped_by == "count" and result.requests == 6 and result.tokens == 24
    assert result.outputs == alone
    assert all(0 < c.ttft_s <= c.latency_s for c in result.completions)
    assert all(c.finish_reason == "length" for c in result.completions)
    assert result.tokens_per_s > 0 and result.percentile_s("ttft_s", 50) > 0


@pytest.mark.parametrize("bad, named", [({"clients": 0}, "clients"),
                                        ({"max_requests": -1}, "max_requests"),
                                        ({"max_duration_s": 0}, "max_duration_s")])
def test_the_load_client_refuses_bad_bounds(bad: dict, named: str) -> None:
    options = {"clients": 1, "max_requests": 1, "max_duration_s": 1.0, **bad}
    with pytest.raises(ConfigurationError, match=named):
        run(sse_load(None, [{"prompt": [1]}], **options))


@pytest.mark.parametrize("body, message", [
    (b'data: {"error": {"type": "RequestTimeoutError", "message": "late"}}\n\n', "late"),
    (b'data: {"choices": []}\n\n', "without data: \\[DONE\\]"),
])
def test_a_stream_that_ends_badly_raises(body: bytes, message: str) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body))

    async def go() -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            response = await client.get("/")
            async for _ in read_events(response):
                pass

    with pytest.raises(StreamError, match=message):
        run(go())


@pytest.mark.parametrize("bad, named", [({"model": "huge"}, "'huge'"),
                                        ({"max_batch_size": 0}, "max_batch_size"),
                                        ({"request_timeout_s": -1}, "-1")])
def test_settings_refuse_bad_values_and_round_trip(bad: dict, named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        CompletionsSettings(**bad)
    settings = CompletionsSettings(max_batch_size=3, torch_threads=1)
    assert CompletionsSettings.from_json(settings.to_json()) == settings


@pytest.mark.timeout(300)
def test_uvicorn_subprocess_streams_the_page_model_and_stops() -> None:
    """The serving page's way: UvicornServer starts this app (not the embedding one)."""
    from benchmarks.completions_app import APP
    from benchmarks.http_server import UvicornServer
    from benchmarks.sse_load import stream_completion

    server = UvicornServer(CompletionsSettings(torch_threads=1), app=APP, start_timeout_s=250)
    with server:
        socket_path = Path(server.uds)
        assert socket_path.is_socket()

        async def go() -> tuple[Any, Any, Any]:
            transport = httpx.AsyncHTTPTransport(uds=server.uds)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                body = {"prompt": [5, 6, 7], "max_tokens": 6}
                streamed = await stream_completion(client, body)
                whole = (await client.post("/v1/completions", json=body)).json()
                return streamed, whole, (await client.get("/health")).json()

        streamed, whole, health = run(go())
    assert not server.running and not socket_path.exists()
    assert len(streamed.token_ids) == 6
    assert streamed.token_ids == whole["choices"][0]["token_ids"]
    assert "random-initialised" in health["weights"] and health["stats"]["completed"] == 2
