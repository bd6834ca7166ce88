"""A FastAPI app that serves BERT sentence embeddings: one model call per request, or batched.

``POST /embed`` with ``{"input_ids": [101, ..., 102]}`` answers
``{"embedding": [...], "pid": ...}``: the mean over the tokens of the model's
last hidden state (what :class:`~benchmarks.bert.BertEmbedding`
gives for that query alone), and the id of the process that answered.
``GET /health`` answers ``{"pid": ..., "weights": ..., "vocab_size": ...}`` (which
weights the model holds) once the app has started. ``GET /metrics`` answers the
host's stats in Prometheus' text format (OpenMetrics when the scraper asks for
it), labelled ``host="embeddings"`` (see :mod:`batch_inference.metrics`): for
variant ``"remote"``, every worker process reports the one shared host.

How the endpoint reaches the model is the *variant*:

* ``"direct"``: no batching; each request calls ``predict_batch`` on its own
  query in a thread pool of ``direct_threads`` threads (so the event loop
  never blocks, and at most ``direct_threads`` model calls run at once);
* ``"host"``: ``await host.predict_async(...)`` on a
  :class:`~batch_inference.ModelHost` started in the app's ``lifespan`` and
  stopped after it;
* ``"remote"``: ``await host.predict(...)`` on an
  :class:`~batch_inference.remote.AsyncRemoteModelHost` named by
  ``grpc_port``, started in the lifespan of every worker process of the
  server: one of them loads the model and serves it, the others send their
  requests to it (see ``docs/remote.md``).

The model is loaded and the host started in the ``lifespan``, never at import:
:func:`app_from_env` is a factory (``uvicorn --factory``) that reads its
:class:`ServeSettings` from ``$BATCH_INFERENCE_HTTP_SETTINGS`` (JSON).
Imports ``fastapi`` and ``pydantic`` (the ``docs`` extra) when an app is built.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations at
# run time, and the request model is defined inside create_app.

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from batch_inference.errors import ConfigurationError

from .http_backends import (
    Backend,
    DirectBackend,
    EmbeddingModel,
    HostedBackend,
    ModelFacts,
    RemoteBackend,
)

__all__ = [
    "SETTINGS_VARIABLE",
    "VARIANTS",
    "EmbeddingModel",
    "ServeSettings",
    "app_from_env",
    "create_app",
    "sentence_embedding",
]

#: Environment variable holding the JSON :class:`ServeSettings` of :func:`app_from_env`.
SETTINGS_VARIABLE = "BATCH_INFERENCE_HTTP_SETTINGS"
#: The ``host`` label of the app's metrics.
METRICS_HOST = "embeddings"
VARIANTS = ("direct", "host", "remote")
BATCHERS = ("bucket", "seq")
Variant = Literal["direct", "host", "remote"]


@dataclass(frozen=True)
class ServeSettings:
    """How one server process serves the model.

    Attributes
    ----------
    variant:
        ``"direct"``, ``"host"`` or ``"remote"`` (see the module docstring).
    model:
        ``"minilm"`` or ``"bert-base"``, as for :func:`~benchmarks.bert.load_bert`.
    device:
        Where the model runs (``"cpu"``, ``"cuda"``).
    max_batch_size:
        The host's ``max_batch_size`` (variants ``"host"`` and ``"remote"``).
    direct_threads:
        Threads calling the model at once (variant ``"direct"``).
    max_length:
        Longest query accepted, in tokens; a longer one gets HTTP 422.
    batcher:
        The host's batcher (variants ``"host"`` and ``"remote"``): ``"bucket"``, a
        :class:`~batch_inference.batcher.BucketSeqBatcher` with the buckets of
        batch-inference 1.0's BERT page, ``[16, 32, 64]`` (queries of one length
        bucket share a batch), or ``"seq"``, a :class:`~batch_inference.batcher.SeqBatcher` (every
        waiting query padded to the longest).
    grpc_port:
        The number that names the shared host of variant ``"remote"``
        (batch-inference 1.0's name; it names a Unix socket, no TCP port is opened).
    ready_dir:
        When set, each process writes ``<ready_dir>/<pid>`` once its lifespan
        has started (and removes it on shutdown), so whoever started the
        server knows when every worker process is ready.
    """

    variant: Variant = "host"
    model: str = "minilm"
    device: str = "cpu"
    max_batch_size: int = 32
    direct_threads: int = 2
    max_length: int = 512
    batcher: Literal["seq", "bucket"] = "bucket"
    grpc_port: int = 8500
    ready_dir: str | None = None

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigurationError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.batcher not in BATCHERS:
            raise ConfigurationError(f"batcher must be one of {BATCHERS}, got {self.batcher!r}")
        for name in ("max_batch_size", "direct_threads", "max_length", "grpc_port"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(f"{name} must be an integer >= 1, got {value!r}")

    def to_json(self) -> str:
        """These settings as the JSON :func:`app_from_env` reads."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ServeSettings":
        """Settings from :meth:`to_json`'s text; unknown or ill-typed keys are refused."""
        try:
            fields = json.loads(text)
            return cls(**fields)
        except (json.JSONDecodeError, TypeError) as error:
            raise ConfigurationError(f"bad serve settings {text!r}: {error}") from None


def make_backend(settings: ServeSettings, model: Any | None) -> tuple[Backend, Any]:
    """The variant's backend (not started) and what the endpoint knows of the model.

    Builds the model (variants ``"direct"`` and ``"host"``, unless ``model`` is
    given): call it off the event loop.
    """
    if settings.variant == "remote":  # the model lives in whichever process serves
        backend = RemoteBackend(settings.model, settings.device, settings.grpc_port,
                                settings.batcher, settings.max_batch_size)
        return backend, model or ModelFacts(settings.model)
    if model is None:
        model = EmbeddingModel(settings.model, settings.device)
    if settings.variant == "direct":
        return DirectBackend(model, settings.direct_threads), model
    return HostedBackend(model, settings.batcher, settings.max_batch_size), model


def sentence_embedding(hidden: Any) -> list[float]:
    """The mean over the tokens of one query's ``(1, length, width)`` last hidden state.

    Computed with NumPy: no torch operation runs on the event loop's thread.
    """
    rows = np.asarray(hidden, dtype=np.float32)
    if rows.ndim != 3 or rows.shape[0] != 1:
        raise ValueError(f"expected a (1, length, width) hidden state, got shape {rows.shape}")
    return rows[0].mean(axis=0).tolist()


def create_app(settings: ServeSettings, model: Any | None = None) -> Any:
    """A FastAPI app serving ``POST /embed`` and ``GET /health`` as ``settings`` say.

    ``model`` (anything with ``predict_batch(input_ids, attention_mask)`` and a
    ``vocab_size``) is used as is; when ``None`` the lifespan builds an
    :class:`EmbeddingModel` from ``settings.model`` and ``settings.device``
    (variant ``"remote"``: the shared host builds it in the process that serves).
    Nothing is loaded or started until the app's lifespan starts; while it
    runs, ``app.state.host`` is the variant ``"host"``'s
    :class:`~batch_inference.ModelHost` (for ``stats()``), ``None`` otherwise.
    """
    import torch
    from fastapi import FastAPI, HTTPException, Request, Response
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import choose_encoder
    from pydantic import BaseModel, Field

    from batch_inference.metrics import register

    class EmbedRequest(BaseModel):
        input_ids: list[int] = Field(min_length=1, max_length=settings.max_length)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backend, served = await asyncio.to_thread(make_backend, settings, model)
        ready = None if settings.ready_dir is None else Path(settings.ready_dir) / str(os.getpid())
        try:  # from here on, whatever happens, the backend is closed
            await backend.start()
            app.state.backend, app.state.vocab_size = backend, int(served.vocab_size)
            app.state.weights = str(getattr(served, "weights", "given by the caller"))
            app.state.host = getattr(backend, "host", None)  # the ModelHost, for its stats()
            app.state.registry = CollectorRegistry()  # this app's own: /metrics reports it
            if backend.stats_host is not None:
                register(backend.stats_host, METRICS_HOST, app.state.registry)
            if ready is not None:
                ready.write_text("ready\n", encoding="utf-8")
            yield
        finally:
            if ready is not None:
                ready.unlink(missing_ok=True)
            await backend.close()

    app = FastAPI(title="batch_inference embeddings", lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"pid": os.getpid(), "weights": app.state.weights,
                "vocab_size": app.state.vocab_size}

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept"))
        # A remote client's stats are a round trip to the serving process: off the event loop.
        body = await asyncio.to_thread(encoder, app.state.registry)
        return Response(body, media_type=content_type)

    @app.post("/embed")
    async def embed(request: EmbedRequest) -> dict[str, Any]:
        bad = [t for t in request.input_ids if not 0 <= t < app.state.vocab_size]
        if bad:
            raise HTTPException(422, f"token ids must be in [0, {app.state.vocab_size}), "
                                     f"got {bad[:5]!r}")
        ids = torch.tensor([request.input_ids], dtype=torch.long)
        hidden = await app.state.backend.predict(ids, torch.ones_like(ids))
        return {"embedding": sentence_embedding(hidden), "pid": os.getpid()}

    return app


def app_from_env() -> Any:
    """``create_app`` with the :class:`ServeSettings` JSON in ``$BATCH_INFERENCE_HTTP_SETTINGS``.

    For ``python -m uvicorn --factory benchmarks.http_app:app_from_env``.
    """
    text = os.environ.get(SETTINGS_VARIABLE)
    if not text:
        raise ConfigurationError(f"${SETTINGS_VARIABLE} must hold the server's settings (JSON)")
    return create_app(ServeSettings.from_json(text))
