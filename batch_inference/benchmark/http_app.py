"""A FastAPI app that serves BERT sentence embeddings: one model call per request, or batched.

``POST /embed`` with ``{"input_ids": [101, ..., 102]}`` answers
``{"embedding": [...], "pid": ...}``: the mean over the tokens of the model's
last hidden state (what :class:`~batch_inference.benchmark.bert.BertEmbedding`
gives for that query alone), and the id of the process that answered.
``GET /health`` answers ``{"pid": ..., "weights": ..., "vocab_size": ...}`` (which
weights the model holds) once the app has started.

How the endpoint reaches the model is the *variant*:

* ``"direct"``: no batching; each request calls ``predict_batch`` on its own
  query in a thread pool of ``direct_threads`` threads (so the event loop
  never blocks, and at most ``direct_threads`` model calls run at once);
* ``"host"``: ``await host.predict_async(...)`` on a
  :class:`~batch_inference.ModelHost` started in the app's ``lifespan`` and
  stopped after it.

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
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from ..errors import ConfigurationError

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
VARIANTS = ("direct", "host")
BATCHERS = ("bucket", "seq")
BUCKETS = [16, 32, 64]  # the seed's buckets, as in the BERT tutorial
Variant = Literal["direct", "host"]


@dataclass(frozen=True)
class ServeSettings:
    """How one server process serves the model.

    Attributes
    ----------
    variant:
        ``"direct"`` or ``"host"`` (see the module docstring).
    model:
        ``"minilm"`` or ``"bert-base"``, as for :func:`~batch_inference.benchmark.bert.load_bert`.
    device:
        Where the model runs (``"cpu"``, ``"cuda"``).
    max_batch_size:
        The host's ``max_batch_size`` (variant ``"host"``).
    direct_threads:
        Threads calling the model at once (variant ``"direct"``).
    max_length:
        Longest query accepted, in tokens; a longer one gets HTTP 422.
    batcher:
        The host's batcher (variant ``"host"``): ``"bucket"``, a
        :class:`~batch_inference.batcher.BucketSeqBatcher` with the seed's
        buckets ``[16, 32, 64]`` (queries of one length bucket share a batch),
        or ``"seq"``, a :class:`~batch_inference.batcher.SeqBatcher` (every
        waiting query padded to the longest).
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
    ready_dir: str | None = None

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigurationError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.batcher not in BATCHERS:
            raise ConfigurationError(f"batcher must be one of {BATCHERS}, got {self.batcher!r}")
        for name in ("max_batch_size", "direct_threads", "max_length"):
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


class EmbeddingModel:
    """The BERT tutorial's model, loaded by name: ``predict_batch(input_ids, attention_mask)``.

    Built from plain arguments (a model name and a device), so another process
    can build it too.
    """

    def __init__(self, model: str = "minilm", device: str = "cpu") -> None:
        from .bert import BertEmbedding, load_bert

        loaded = load_bert(model, device=device)
        self.weights = loaded.weights
        self.vocab_size = loaded.vocab_size
        self._embedding = BertEmbedding(loaded.model, device=device)

    def predict_batch(self, input_ids: Any, attention_mask: Any) -> Any:
        return self._embedding.predict_batch(input_ids, attention_mask)


def sentence_embedding(hidden: Any) -> list[float]:
    """The mean over the tokens of one query's ``(1, length, width)`` last hidden state.

    Computed with NumPy: no torch operation runs on the event loop's thread.
    """
    rows = np.asarray(hidden, dtype=np.float32)
    if rows.ndim != 3 or rows.shape[0] != 1:
        raise ValueError(f"expected a (1, length, width) hidden state, got shape {rows.shape}")
    return rows[0].mean(axis=0).tolist()


class _Backend(Protocol):
    async def predict(self, input_ids: Any, attention_mask: Any) -> Any: ...

    async def close(self) -> None: ...


class _Direct:
    """Each request calls the model on its own query, in a pool of ``threads`` threads."""

    def __init__(self, model: Any, threads: int) -> None:
        self._model = model
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="direct-model")

    async def predict(self, input_ids: Any, attention_mask: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, self._model.predict_batch, input_ids, attention_mask
        )

    async def close(self) -> None:
        await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)


class _Hosted:
    """Each request awaits ``host.predict_async``: the host batches waiting requests."""

    def __init__(self, model: Any, max_batch_size: int, batcher_name: str) -> None:
        from .. import ModelHost
        from ..batcher.bucket_seq_batcher import BucketSeqBatcher
        from ..batcher.seq_batcher import SeqBatcher

        if batcher_name == "bucket":
            batcher: Any = BucketSeqBatcher(padding_tokens=[0, 0], buckets=BUCKETS, tensor="pt")
        else:
            batcher = SeqBatcher(padding_tokens=[0, 0], tensor="pt")
        self.host = ModelHost(model_obj=model, batcher=batcher, max_batch_size=max_batch_size)
        self.host.start()

    async def predict(self, input_ids: Any, attention_mask: Any) -> Any:
        return await self.host.predict_async(input_ids, attention_mask)

    async def close(self) -> None:
        await asyncio.to_thread(self.host.stop, timeout=30.0)


def _backend(settings: ServeSettings, model: Any) -> _Backend:
    if settings.variant == "direct":
        return _Direct(model, settings.direct_threads)
    return _Hosted(model, settings.max_batch_size, settings.batcher)


def create_app(settings: ServeSettings, model: Any | None = None) -> Any:
    """A FastAPI app serving ``POST /embed`` and ``GET /health`` as ``settings`` say.

    ``model`` (anything with ``predict_batch(input_ids, attention_mask)`` and a
    ``vocab_size``) is used as is; when ``None`` the lifespan builds an
    :class:`EmbeddingModel` from ``settings.model`` and ``settings.device``.
    Nothing is loaded or started until the app's lifespan starts; while it
    runs, ``app.state.host`` is the variant ``"host"``'s
    :class:`~batch_inference.ModelHost` (for ``stats()``), ``None`` otherwise.
    """
    import torch
    from fastapi import FastAPI, HTTPException
    from pydantic import BaseModel, Field

    class EmbedRequest(BaseModel):
        input_ids: list[int] = Field(min_length=1, max_length=settings.max_length)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        served = model if model is not None else await asyncio.to_thread(
            EmbeddingModel, settings.model, settings.device)
        backend = _backend(settings, served)
        app.state.backend, app.state.vocab_size = backend, int(served.vocab_size)
        app.state.weights = str(getattr(served, "weights", "given by the caller"))
        app.state.host = getattr(backend, "host", None)  # the ModelHost, for its stats()
        ready = None if settings.ready_dir is None else Path(settings.ready_dir) / str(os.getpid())
        try:
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

    For ``python -m uvicorn --factory batch_inference.benchmark.http_app:app_from_env``.
    """
    text = os.environ.get(SETTINGS_VARIABLE)
    if not text:
        raise ConfigurationError(f"${SETTINGS_VARIABLE} must hold the server's settings (JSON)")
    return create_app(ServeSettings.from_json(text))
