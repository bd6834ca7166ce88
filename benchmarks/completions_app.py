"""A FastAPI app in the shape of the OpenAI completions API, backed by a ``GenerationHost``.

``POST /v1/completions`` takes ``{"prompt": [token ids], "max_tokens": 16,
"temperature": 0, "top_p": 1, "seed": null, "stream": false}`` and answers

* with ``stream: false``: one JSON object, ``{"id", "object": "text_completion",
  "created", "model", "choices": [{"index": 0, "text", "token_ids",
  "finish_reason", "logprobs": null}], "usage": {...}}``;
* with ``stream: true``: Server-Sent Events, one ``data: {...}\\n\\n`` chunk per
  generated token (``choices[0].text`` and ``choices[0].token_ids``; the last
  token's chunk carries ``finish_reason``), then ``data: [DONE]\\n\\n``.

The page's model is random-initialised and has no tokenizer, so ``text`` is
the token ids written out (``" 17 4"``); ``token_ids`` carries them as ints.
A request the host refuses (a token id outside the vocabulary, a prompt too
long for ``max_tokens``...) gets HTTP 400, a value of the wrong type or range
HTTP 422, both with a message naming the value. A client that disconnects
cancels its request: its row leaves the running batch at the next step.

``GET /health`` answers ``{"pid", "weights", "vocab_size", "sampling",
"active", "stats": {...}}``. The model is loaded, and the host started, in
the app's ``lifespan`` (nothing at import): :func:`app_from_env` is the factory
``UvicornServer`` starts (its :class:`CompletionsSettings` arrive as JSON in
``$BATCH_INFERENCE_HTTP_SETTINGS``).
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations at
# run time, and the request model is defined inside create_app.

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from batch_inference.errors import (
    ConfigurationError,
    HostBrokenError,
    HostNotRunningError,
    HostStoppedError,
    InvalidRequestError,
    QueueFullError,
    RequestTimeoutError,
)
from batch_inference.generation import GenerationHost
from benchmarks.http_app import SETTINGS_VARIABLE

__all__ = ["APP", "CompletionsSettings", "app_from_env", "create_app"]

#: What :class:`~benchmarks.http_server.UvicornServer` starts (``uvicorn --factory``).
APP = "benchmarks.completions_app:app_from_env"
_SAMPLING = ("temperature", "top_p", "seed")


@dataclass(frozen=True)
class CompletionsSettings:
    """How one server process serves the model.

    Attributes
    ----------
    model:
        ``"quick"`` or ``"full"``: the GPT page's model
        (:func:`~benchmarks.generation.load_gpt2`).
    device:
        Where the model runs.
    max_batch_size:
        The host's ``max_batch_size``.
    torch_threads:
        ``torch.set_num_threads`` in the server process (``None``: torch's default).
    request_timeout_s:
        Each request's deadline in the host.
    seed:
        Seed of the random-initialised weights.
    ready_dir:
        When set, the process writes ``<ready_dir>/<pid>`` once its lifespan
        has started (``UvicornServer`` waits for it).
    """

    model: str = "quick"
    device: str = "cpu"
    max_batch_size: int = 32
    torch_threads: int | None = None
    request_timeout_s: float = 120.0
    seed: int = 0
    ready_dir: str | None = None

    def __post_init__(self) -> None:
        if self.model not in ("quick", "full"):
            raise ConfigurationError(f"model must be 'quick' or 'full', got {self.model!r}")
        for name in ("max_batch_size", "torch_threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ConfigurationError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.request_timeout_s, bool) or not self.request_timeout_s > 0:
            raise ConfigurationError(
                f"request_timeout_s must be > 0, got {self.request_timeout_s!r}"
            )

    @property
    def variant(self) -> str:
        """What ``UvicornServer`` calls this server in its messages."""
        return f"completions ({self.model})"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "CompletionsSettings":
        try:
            return cls(**json.loads(text))
        except (json.JSONDecodeError, TypeError) as error:
            raise ConfigurationError(f"bad completions settings {text!r}: {error}") from None


def _load(settings: CompletionsSettings) -> tuple[Any, str]:
    import torch

    from benchmarks.generation import load_gpt2

    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    loaded = load_gpt2(settings.model, seed=settings.seed, device=settings.device)
    return loaded.model, loaded.weights


def _choice(tokens: list[int]) -> dict[str, Any]:
    """``choices[0]`` without its ``finish_reason``: the tokens as ids and as text."""
    return {"index": 0, "text": "".join(f" {t}" for t in tokens), "token_ids": tokens,
            "logprobs": None}


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


async def _disconnected(request: Any) -> None:
    """Return once the client has disconnected (the request's body was read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _token_events_class() -> type:
    from starlette.responses import StreamingResponse

    class TokenEvents(StreamingResponse):
        """An SSE response that calls ``on_end`` however it ends (sent, failed, client gone).

        Starlette cancels a streaming response whose client disconnects; the
        body's generator may not even have started, so its own ``finally``
        cannot be relied on to cancel the request.
        """

        def __init__(self, content: AsyncIterator[str], on_end: Callable[[], None]) -> None:
            super().__init__(content, media_type="text/event-stream")
            self._on_end = on_end

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                self._on_end()

    return TokenEvents


def create_app(settings: CompletionsSettings, model: Any | None = None,
               eos_token_id: int | None = None) -> Any:
    """A FastAPI app serving ``POST /v1/completions`` and ``GET /health``.

    ``model`` (a Hugging Face causal LM or any ``StepModel``) is used as is;
    when ``None`` the lifespan loads the GPT page's model from ``settings``.
    While the lifespan runs, ``app.state.host`` is the started
    :class:`~batch_inference.generation.GenerationHost` and ``app.state.active``
    the number of requests being answered.
    """
    from fastapi import FastAPI, HTTPException
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.requests import Request

    _TokenEvents = _token_events_class()  # noqa: N806 - a class

    class CompletionRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")

        prompt: list[int] = Field(min_length=1)
        max_tokens: int = Field(16, ge=1)
        temperature: float = Field(0.0, ge=0.0, le=2.0)
        top_p: float = Field(1.0, gt=0.0, le=1.0)
        seed: int | None = Field(None, ge=0)
        stream: bool = False
        model: str | None = None  # accepted for OpenAI clients, not used

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        served, weights = (model, "given by the caller") if model is not None else \
            await asyncio.to_thread(_load, settings)
        host = GenerationHost(served, max_batch_size=settings.max_batch_size,
                              eos_token_id=eos_token_id)
        ready = None if settings.ready_dir is None else Path(settings.ready_dir) / str(os.getpid())
        host.start()
        try:  # from here on, whatever happens, the host is stopped
            app.state.host, app.state.weights, app.state.active = host, weights, 0
            if ready is not None:
                ready.write_text("ready\n", encoding="utf-8")
            yield
        finally:
            if ready is not None:
                ready.unlink(missing_ok=True)
            await asyncio.to_thread(host.stop, cancel_pending=True, timeout=30.0)

    app = FastAPI(title="batch_inference completions", lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        host: GenerationHost = app.state.host
        stats = host.stats()
        return {"pid": os.getpid(), "weights": app.state.weights,
                "vocab_size": host.model.vocab_size, "sampling": sorted(_SAMPLING),
                "active": app.state.active,
                "stats": {name: getattr(stats, name) for name in
                          ("requests", "completed", "failed", "timed_out", "cancelled",
                           "generated_tokens", "steps")}}

    def start(body: CompletionRequest) -> Any:
        """The request's TokenStream, or the HTTP error the host's refusal maps to."""
        options: dict[str, Any] = {"timeout": settings.request_timeout_s}
        for name in _SAMPLING:
            value, default = getattr(body, name), CompletionRequest.model_fields[name].default
            if value != default:
                options[name] = value
        try:
            return app.state.host.stream(body.prompt, body.max_tokens, **options)
        except InvalidRequestError as error:
            raise HTTPException(400, str(error)) from None
        except QueueFullError as error:
            raise HTTPException(429, str(error)) from None
        except (HostNotRunningError, HostBrokenError) as error:
            raise HTTPException(503, str(error)) from None

    def finish_reason(tokens: list[int], max_tokens: int) -> str | None:
        """``"stop"`` after EOS, ``"length"`` at ``max_tokens``, ``None`` before either."""
        if tokens and eos_token_id is not None and tokens[-1] == eos_token_id:
            return "stop"
        return "length" if len(tokens) >= max_tokens else None

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Any:
        stream = start(body)
        meta = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                "created": int(time.time()), "model": body.model or "batch_inference"}
        app.state.active += 1
        if body.stream:
            return _TokenEvents(events(stream, body.max_tokens, meta), partial(ended, stream))
        try:
            tokens = await until_disconnect(stream, request)
        finally:
            ended(stream)
        choice = {**_choice(tokens), "finish_reason": finish_reason(tokens, body.max_tokens)}
        return {**meta, "choices": [choice],
                "usage": {"prompt_tokens": len(body.prompt), "completion_tokens": len(tokens),
                          "total_tokens": len(body.prompt) + len(tokens)}}

    def ended(stream: Any) -> None:
        """A request's answer is over (sent, failed, or its client left): free its row."""
        stream.cancel()  # does nothing once the completion is done
        app.state.active -= 1

    async def until_disconnect(stream: Any, request: Request) -> list[int]:
        """The completion; if the client disconnects first, its request is cancelled."""
        completion = asyncio.ensure_future(stream)
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({completion, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not completion.done():
                completion.cancel()  # cancels the request too
        if not completion.done() or completion.cancelled():
            raise HTTPException(499, "the client disconnected")
        error = completion.exception()
        if isinstance(error, RequestTimeoutError):
            raise HTTPException(504, str(error))
        if isinstance(error, HostStoppedError):
            raise HTTPException(503, str(error))
        return completion.result()

    async def events(stream: Any, max_tokens: int, meta: dict) -> AsyncIterator[str]:
        """One SSE chunk per token, then ``[DONE]``; an error chunk if the request failed."""
        tokens: list[int] = []
        try:
            async for token in stream:
                tokens.append(token)
                yield _sse({**meta, "choices": [
                    {**_choice([token]), "finish_reason": finish_reason(tokens, max_tokens)}]})
        except Exception as error:  # the request failed in the host: say so, then end
            yield _sse({"error": {"type": type(error).__name__, "message": str(error)}})
        yield "data: [DONE]\n\n"

    return app


def app_from_env() -> Any:
    """``create_app`` with the :class:`CompletionsSettings` JSON in the settings variable."""
    text = os.environ.get(SETTINGS_VARIABLE)
    if not text:
        raise ConfigurationError(f"${SETTINGS_VARIABLE} must hold the server's settings (JSON)")
    return create_app(CompletionsSettings.from_json(text))
