"""MultiBatcher: batch() gives several batched requests, the model runs once for each.

Covers the contract on its own, a toy MultiBatcher end to end through a
ModelHost, BucketSeqBatcher called directly on several buckets (1.0's
contract), and the worker's device copy of the list-of-tuples form.
"""

from __future__ import annotations

import threading
from collections import namedtuple
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch

from batch_inference import ModelHost, OutputMismatchError
from batch_inference._staging import make_stager
from batch_inference.batcher import BucketSeqBatcher, SeqBatcher
from batch_inference.batcher.multi_batcher import MultiBatcher


class EvenOddBatcher(MultiBatcher):
    """Each request is a (1,) int tensor; even values and odd values never share a call."""

    def batch(self, requests: Sequence[tuple[Any, ...]]) -> tuple[list[tuple[Any, ...]], Any]:
        groups: dict[int, list[int]] = {}
        for index, (x,) in enumerate(requests):
            groups.setdefault(int(x[0]) % 2, []).append(index)
        order = [groups[parity] for parity in sorted(groups)]
        batched = [(torch.cat([requests[i][0] for i in indices]),) for indices in order]
        return batched, order

    def unbatch(self, outputs: Any, context: Any) -> list[Any]:
        results: list[Any] = [None] * sum(len(indices) for indices in context)
        for output, indices in zip(outputs, context):
            for row, index in enumerate(indices):
                results[index] = output[row : row + 1]
        return results


class ParityModel:
    """``x * 10 + parity``; the first call blocks until ``release`` (so requests pile up)."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls: list[list[int]] = []
        self.fail_on = fail_on
        self._lock = threading.Lock()

    def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
        with self._lock:
            self.calls.append([int(v) for v in x])
            first = len(self.calls) == 1
        if first:
            self.entered.set()
            if not self.release.wait(30):
                raise TimeoutError("the test never released the gate")
        if self.fail_on is not None and self.fail_on in x.tolist():
            raise ValueError(f"cannot do {self.fail_on}")
        return x * 10 + x % 2


def one(value: int) -> torch.Tensor:
    return torch.tensor([value])


# ----------------------------------------------------------------------------- the contract
def test_a_multi_batcher_without_batch_and_unbatch_cannot_be_built() -> None:
    class Incomplete(MultiBatcher):
        pass

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()  # type: ignore[abstract]


def test_run_calls_predict_batch_once_per_batched_request_in_order() -> None:
    seen: list[tuple[Any, ...]] = []

    def predict_batch(*args: Any) -> Any:
        seen.append(args)
        return sum(args)

    outputs = EvenOddBatcher().run(predict_batch, [(1, 2), (3, 4), (5, 6)])

    assert outputs == [3, 7, 11]
    assert seen == [(1, 2), (3, 4), (5, 6)]


# ----------------------------------------------------------------------------- through a host
@pytest.mark.timeout(30)
def test_each_group_gets_its_own_call_and_each_caller_its_own_answer() -> None:
    model = ParityModel()
    with ModelHost(model_obj=model, batcher=EvenOddBatcher(), max_batch_size=32) as host:
        first = host.submit(one(100))
        assert model.entered.wait(10)
        values = [3, 8, 5, 2, 7, 4, 1, 6]  # queued behind the gate: one batch of 8
        queued = [host.submit(one(v)) for v in values]
        model.release.set()
        assert torch.equal(first.result(10), one(1000))
        for value, future in zip(values, queued):
            assert torch.equal(future.result(10), one(value * 10 + value % 2))
    # One call for the gated request, then one per parity for the batch of eight.
    assert model.calls == [[100], [8, 2, 4, 6], [3, 5, 7, 1]]
    assert host.stats().completed == 9


@pytest.mark.timeout(30)
def test_a_failing_group_fails_only_its_failing_request() -> None:
    model = ParityModel(fail_on=5)
    with ModelHost(model_obj=model, batcher=EvenOddBatcher(), max_batch_size=32) as host:
        first = host.submit(one(0))
        assert model.entered.wait(10)
        values = [2, 5, 7, 4]
        queued = [host.submit(one(v)) for v in values]
        model.release.set()
        first.result(10)
        for value, future in zip(values, queued):
            if value == 5:
                with pytest.raises(ValueError, match="cannot do 5"):
                    future.result(10)
            else:
                assert torch.equal(future.result(10), one(value * 10 + value % 2))


# ----------------------------------------------------------------------------- BucketSeqBatcher
def test_bucket_seq_batcher_is_a_multi_batcher_and_a_seq_batcher() -> None:
    batcher = BucketSeqBatcher([0, 0], buckets=[4, 8], tensor="pt")
    assert isinstance(batcher, MultiBatcher) and isinstance(batcher, SeqBatcher)


@pytest.mark.parametrize("kind", ["pt", "np"])
def test_bucket_batch_on_mixed_lengths_makes_one_batched_request_per_bucket(kind: str) -> None:
    lengths = [7, 2, 12, 3, 6, 20]  # buckets [1, 4]: 2, 3; [5, 8]: 7, 6; [9, ...): 12, 20
    make = (lambda n, v: torch.full((1, n), v)) if kind == "pt" else (
        lambda n, v: np.full((1, n), v))
    requests = [(make(n, i + 1), make(n, 1)) for i, n in enumerate(lengths)]
    batcher = BucketSeqBatcher([0, 0], buckets=[4, 8], tensor=kind)

    batched, context = batcher.batch(requests)

    assert [tuple(ids.shape) for ids, _ in batched] == [(2, 3), (2, 7), (2, 20)]
    assert [ids[:, 0].tolist() for ids, _ in batched] == [[2, 4], [1, 5], [3, 6]]
    for ids, mask in batched:  # each bucket padded to its own longest, with token 0
        assert (ids * (mask == 0) == 0).all()
    outputs = [ids[:, :, None] for ids, _ in batched]  # (rows, length, 1), as a model would
    results = batcher.unbatch(outputs, context)
    assert len(results) == len(requests)
    for (ids, _), n, result in zip(requests, lengths, results):
        assert tuple(result.shape) == (1, n, 1)  # trimmed back to the caller's length
        assert (result[..., 0] == ids).all()


def test_bucket_batch_within_one_bucket_is_a_list_of_one() -> None:
    batcher = BucketSeqBatcher([0], buckets=[16], tensor="pt")
    requests = [(torch.ones(1, 3, dtype=torch.int64),), (torch.ones(2, 5, dtype=torch.int64),)]
    batched, context = batcher.batch(requests)
    assert len(batched) == 1 and tuple(batched[0][0].shape) == (3, 5)
    results = batcher.unbatch([batched[0][0]], context)
    assert [tuple(r.shape) for r in results] == [(1, 3), (2, 5)]


def test_bucket_unbatch_with_the_wrong_number_of_outputs_names_both_counts() -> None:
    batcher = BucketSeqBatcher([0], buckets=[4], tensor="pt")
    batched, context = batcher.batch([(torch.ones(1, 2),), (torch.ones(1, 9),)])
    assert len(batched) == 2
    with pytest.raises(OutputMismatchError, match=r"list of 2 outputs .* got a list of 1"):
        batcher.unbatch([batched[0][0]], context)
    with pytest.raises(OutputMismatchError, match=r"list of 2 outputs .* got a Tensor"):
        batcher.unbatch(batched[0][0], context)


@pytest.mark.timeout(30)
def test_bucket_seq_batcher_in_a_host_with_a_device_gets_one_call_per_bucket() -> None:
    class Embed:
        def __init__(self, device: str) -> None:
            self.device = device
            self.widths: list[int] = []

        def predict_batch(self, ids: torch.Tensor) -> torch.Tensor:
            assert ids.device.type == self.device
            self.widths.append(int(ids.shape[1]))
            return ids[:, :, None].float() * 2

    batcher = BucketSeqBatcher([0], buckets=[4], tensor="pt")
    with ModelHost(Embed, batcher=batcher, devices=["cpu"]) as host:
        for n in (2, 9, 3):
            ids = torch.arange(1, n + 1)[None]
            assert torch.equal(host.predict(ids), ids[:, :, None].float() * 2)
    assert host.models[0].widths == [2, 9, 3]


# ----------------------------------------------------------------------------- device copy
def test_staging_keeps_lists_tuples_and_namedtuples_and_moves_every_tensor() -> None:
    Pair = namedtuple("Pair", "a b")
    batched = [(torch.ones(2), "text", 3), (Pair(torch.zeros(1), [torch.ones(1)]),)]

    stager = make_stager("meta")
    moved, _ = stager.stage(batched)

    assert type(moved) is list and len(moved) == 2
    first, second = moved
    assert type(first) is tuple and first[0].device.type == "meta" and first[1:] == ("text", 3)
    assert type(second[0]) is Pair
    assert second[0].a.device.type == "meta" and second[0].b[0].device.type == "meta"
    single, _ = stager.stage((torch.ones(1),))  # the one-tuple form is unchanged
    assert type(single) is tuple and single[0].device.type == "meta"
