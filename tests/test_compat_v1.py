"""Programs written for microsoft batch-inference 1.0 run unchanged.

Each test is written as 1.0's README and tests write them: NumPy models, 1.0's
import paths, ``ModelHost(...)(*model_args)``, ``@batching`` in its three
forms, the asyncio host, custom batchers that subclass 1.0's ``Batcher`` or
``MultiBatcher`` and define only ``batch``/``unbatch``. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest

BOUND_S = 10.0


# 1.0's README model: x [batch, m, k] @ weights [k, n].
class MyModel:
    def __init__(self, k: int, n: int) -> None:
        self.weights = np.random.default_rng(k * 10 + n).standard_normal((k, n)).astype("f")

    def predict_batch(self, x: np.ndarray) -> np.ndarray:
        return np.matmul(x, self.weights)


def run_threads(target: Any, count: int) -> None:
    """Run ``target`` on ``count`` threads; fail if any is still running after the bound."""
    threads = [threading.Thread(target=target) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(BOUND_S)
    assert not any(thread.is_alive() for thread in threads), "a caller never got its answer"


def test_one_zero_names_import_from_their_one_zero_paths() -> None:
    import batch_inference
    from batch_inference import (  # noqa: F401 - the top-level names of 1.0
        Batcher,
        BucketSeqBatcher,
        ConcatBatcher,
        ModelHost,
        MultiBatcher,
        SeqBatcher,
        batching,
    )
    from batch_inference.aio import ModelHost as AioModelHost
    from batch_inference.batcher.batcher import Batcher as Batcher10
    from batch_inference.batcher.bucket_seq_batcher import BucketSeqBatcher as Bucket10
    from batch_inference.batcher.concat_batcher import ConcatBatcher as Concat10
    from batch_inference.batcher.multi_batcher import MultiBatcher as Multi10
    from batch_inference.batcher.seq_batcher import SeqBatcher as Seq10
    from batch_inference.model_host import ModelHost as ModelHost10

    assert (Batcher10, Bucket10, Concat10, Multi10, Seq10, ModelHost10) == (
        Batcher, BucketSeqBatcher, ConcatBatcher, MultiBatcher, SeqBatcher, ModelHost)
    assert AioModelHost is not ModelHost
    for name in ("Batcher", "BucketSeqBatcher", "ConcatBatcher", "MultiBatcher", "SeqBatcher"):
        assert name in batch_inference.__all__


@pytest.mark.timeout(60)
def test_readme_program_decorator_with_threads() -> None:
    from batch_inference import batching
    from batch_inference.batcher.concat_batcher import ConcatBatcher

    @batching(batcher=ConcatBatcher(), max_batch_size=32)
    class Decorated(MyModel):
        pass

    reference = MyModel(3, 3)
    mismatches: list[int] = []
    with Decorated.host(3, 3) as host:

        def send_requests() -> None:
            rng = np.random.default_rng(threading.get_ident() % 2**32)
            for _ in range(10):
                x = rng.standard_normal((1, 3, 3)).astype("f")
                y = host.predict(x)
                if not np.allclose(y, reference.predict_batch(x), atol=1e-5):
                    mismatches.append(1)

        run_threads(send_requests, 8)
    assert mismatches == []
    assert host.stats().completed == 80


@pytest.mark.timeout(60)
def test_model_host_called_with_model_args_then_start_predict_stop() -> None:
    from batch_inference.batcher.concat_batcher import ConcatBatcher
    from batch_inference.model_host import ModelHost

    host = ModelHost(MyModel, batcher=ConcatBatcher(tensor="np"), max_batch_size=8)(3, 4)
    host.start()
    try:
        x = np.ones((2, 5, 3), dtype="f")
        y = host.predict(x)
    finally:
        host.stop()
    assert y.shape == (2, 5, 4)
    assert np.allclose(y, MyModel(3, 4).predict_batch(x))


@pytest.mark.timeout(60)
def test_aio_host_with_many_tasks_each_gets_its_own_answer() -> None:
    from batch_inference.aio import ModelHost
    from batch_inference.batcher.concat_batcher import ConcatBatcher

    reference = MyModel(3, 3)
    inputs = [np.full((1, 2, 3), float(i), dtype="f") for i in range(64)]

    async def main() -> list[np.ndarray]:
        host = ModelHost(MyModel, batcher=ConcatBatcher(), max_batch_size=32)(3, 3)
        await host.start()
        try:
            return await asyncio.wait_for(
                asyncio.gather(*(host.predict(x) for x in inputs)), BOUND_S
            )
        finally:
            await asyncio.wait_for(host.stop(), BOUND_S)

    for x, y in zip(inputs, asyncio.run(main())):
        assert np.allclose(y, reference.predict_batch(x), atol=1e-5)


@pytest.mark.timeout(60)
def test_seq_batcher_with_one_zero_arguments() -> None:
    from batch_inference import ModelHost
    from batch_inference.batcher.seq_batcher import SeqBatcher

    class Lengths:
        def predict_batch(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            return (ids * mask).sum(axis=1, keepdims=True)

    batcher = SeqBatcher(padding_tokens=[0, 0], tensor="np")
    with ModelHost(model_obj=Lengths(), batcher=batcher) as host:
        for n in (1, 4, 9):
            ids = np.arange(1, n + 1)[None]
            assert host.predict(ids, np.ones_like(ids)).tolist() == [[n * (n + 1) // 2]]


@pytest.mark.timeout(60)
def test_custom_batcher_defining_only_batch_and_unbatch() -> None:
    from batch_inference import ModelHost
    from batch_inference.batcher.batcher import Batcher

    class ListBatcher(Batcher):
        """1.0's custom batcher: requests of plain Python numbers."""

        def batch(self, requests: list) -> tuple:
            return ([r[0] for r in requests],), len(requests)

        def unbatch(self, batched_response: Any, unbatch_ctx: Any) -> list:
            assert len(batched_response) == unbatch_ctx
            return list(batched_response)

    class Squares:
        def predict_batch(self, values: list) -> list:
            return [v * v for v in values]

    results: dict[int, int] = {}
    with ModelHost(model_obj=Squares(), batcher=ListBatcher()) as host:

        def call() -> None:
            value = threading.get_ident() % 1000
            results[value] = host.predict(value)

        run_threads(call, 6)
    assert results and all(square == value * value for value, square in results.items())


@pytest.mark.timeout(60)
def test_custom_multi_batcher_runs_the_model_once_per_batched_request() -> None:
    from batch_inference import ModelHost
    from batch_inference.batcher.multi_batcher import MultiBatcher

    class OnePerCall(MultiBatcher):
        """The simplest MultiBatcher: every request is its own batched request."""

        def batch(self, requests: list) -> tuple:
            return [tuple(r) for r in requests], len(requests)

        def unbatch(self, batched_responses: list, unbatch_ctx: Any) -> list:
            assert len(batched_responses) == unbatch_ctx
            return list(batched_responses)

    calls: list[int] = []

    class Rows:
        def predict_batch(self, x: np.ndarray) -> int:
            calls.append(int(x.shape[0]))
            return int(x.shape[0])

    with ModelHost(model_obj=Rows(), batcher=OnePerCall()) as host:
        assert [host.predict(np.zeros((n, 2))) for n in (1, 3, 2)] == [1, 3, 2]
    assert calls == [1, 3, 2]


def test_bucket_seq_batcher_batch_returns_one_batched_request_per_bucket() -> None:
    from batch_inference.batcher.bucket_seq_batcher import BucketSeqBatcher

    batcher = BucketSeqBatcher(padding_tokens=[0, 0], buckets=[4, 8], tensor="np")
    requests = [(np.ones((1, n), dtype=np.int64), np.ones((1, n), dtype=np.int64))
                for n in (3, 6, 2, 10)]
    batched_requests, unbatch_ctx = batcher.batch(requests)
    assert [args[0].shape for args in batched_requests] == [(2, 3), (1, 6), (1, 10)]
    responses = batcher.unbatch([args[0] for args in batched_requests], unbatch_ctx)
    assert [r.shape for r in responses] == [(1, 3), (1, 6), (1, 2), (1, 10)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("form", ["bare", "keywords", "positional", "positional_size"])
def test_decorator_forms(form: str) -> None:
    from batch_inference import ModelHost, batching
    from batch_inference.batcher.concat_batcher import ConcatBatcher

    batcher = ConcatBatcher()
    decorate = {
        "bare": batching,
        "keywords": batching(batcher=batcher, max_batch_size=4),
        "positional": batching(batcher),
        "positional_size": batching(batcher, 4),
    }[form]

    @decorate
    class Model(MyModel):
        pass

    host = Model.host(3, 2)
    assert isinstance(host, ModelHost)
    assert host.max_batch_size == (32 if form in ("bare", "positional") else 4)
    if form != "bare":
        assert host.batcher is batcher
    with host:
        x = np.ones((1, 1, 3), dtype="f")
        assert np.allclose(host.predict(x), MyModel(3, 2).predict_batch(x))


def test_decorator_refuses_two_batchers_and_a_batcher_class() -> None:
    from batch_inference import ConfigurationError, batching
    from batch_inference.batcher.concat_batcher import ConcatBatcher

    with pytest.raises(ConfigurationError, match=r"two batchers: .*ConcatBatcher.* and batcher="):
        batching(ConcatBatcher(), batcher=ConcatBatcher())
    with pytest.raises(ConfigurationError, match=r"the class ConcatBatcher: write ConcatBatcher"):
        batching(ConcatBatcher)
    with pytest.raises(ConfigurationError, match=r"decorates a class, got 'concat'"):
        batching("concat")


@pytest.mark.timeout(60)
def test_remote_start_twice_raises_runtime_error(tmp_path: Any, monkeypatch: Any) -> None:
    """1.0's own ``test_remote_start_twice``: a second start() of a running remote host."""
    monkeypatch.setenv("BATCH_INFERENCE_RUNTIME_DIR", str(tmp_path / "rt"))
    from batch_inference import remote_batching
    from batch_inference.batcher.concat_batcher import ConcatBatcher

    @remote_batching(grpc_port=30999, batcher=ConcatBatcher(tensor="np"), max_batch_size=8)
    class Model(MyModel):
        pass

    host = Model.host(3, 3)
    host.start()
    try:
        with pytest.raises(RuntimeError):
            host.start()
        x = np.ones((1, 2, 3), dtype="f")
        assert np.allclose(host.predict(x), MyModel(3, 3).predict_batch(x))
    finally:
        host.stop()


@pytest.mark.timeout(60)
def test_aio_remote_start_twice_raises_runtime_error(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("BATCH_INFERENCE_RUNTIME_DIR", str(tmp_path / "rt"))
    from batch_inference.aio import RemoteModelHost
    from batch_inference.batcher.concat_batcher import ConcatBatcher

    async def main() -> None:
        host = RemoteModelHost(MyModel, 30998, ConcatBatcher(tensor="np"))(3, 3)
        await host.start()
        try:
            with pytest.raises(RuntimeError):
                await host.start()
        finally:
            await asyncio.wait_for(host.stop(), BOUND_S)

    asyncio.run(main())
