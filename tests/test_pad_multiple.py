"""pad_to_multiple_of: padded lengths rounded up, results trimmed back per caller."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from batch_inference.batcher import BucketSeqBatcher, LengthAwareBatcher, SeqBatcher
from batch_inference.batcher.base import BatchLimits, RequestInfo, Waiting
from batch_inference.errors import ConfigurationError

BATCHERS = {
    "seq": lambda **kw: SeqBatcher([0, 0], **kw),
    "bucket": lambda **kw: BucketSeqBatcher([0, 0], buckets=[16, 32], **kw),
    "length_aware": lambda **kw: LengthAwareBatcher([0, 0], **kw),
}


def query(length: int, first: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.arange(first, first + length).reshape(1, length)
    return ids, torch.ones_like(ids)


@pytest.mark.parametrize("name", sorted(BATCHERS))
@pytest.mark.parametrize("bad", [0, -8, 2.5, True, "8"])
def test_pad_to_multiple_of_is_validated(name: str, bad: Any) -> None:
    with pytest.raises(ConfigurationError, match=f"pad_to_multiple_of .* got {bad!r}"):
        BATCHERS[name](pad_to_multiple_of=bad)


@pytest.mark.parametrize("name", sorted(BATCHERS))
def test_the_batch_is_padded_to_the_multiple_and_trimmed_back(name: str) -> None:
    batcher = BATCHERS[name](pad_to_multiple_of=8)
    requests = [query(3), query(5, first=50)]
    batched, context = batcher.batch(requests)
    bucketed = isinstance(batcher, BucketSeqBatcher)  # 1.0's contract: one tuple per bucket
    args = batched[0] if bucketed else batched
    assert tuple(args[0].shape) == (2, 8)
    assert torch.equal(args[0][0], torch.tensor([1, 2, 3, 0, 0, 0, 0, 0]))
    assert torch.equal(args[1][1], torch.tensor([1, 1, 1, 1, 1, 0, 0, 0]))
    outputs = (args[0][..., None] * 2, args[1])
    results = batcher.unbatch([outputs] if bucketed else outputs, context)
    for (ids, mask), (doubled, got_mask) in zip(requests, results):
        assert torch.equal(doubled[..., 0], ids * 2) and torch.equal(got_mask, mask)
    infos = [batcher.inspect(r) for r in requests]
    assert batcher.padded_tokens(infos) == 16


def test_one_length_is_still_rounded_up_and_trimmed() -> None:
    batcher = SeqBatcher([0], tensor="np", pad_to_multiple_of=8)
    requests = [(np.full((2, 5), 7),), (np.full((1, 5), 9),)]
    args, context = batcher.batch(requests)
    assert args[0].shape == (3, 8) and (args[0][:, 5:] == 0).all()
    first, second = batcher.unbatch(args[0], context)
    assert first.shape == (2, 5) and second.shape == (1, 5) and (second == 9).all()


def test_a_length_already_a_multiple_is_not_padded() -> None:
    batcher = SeqBatcher([0, 0], pad_to_multiple_of=8)
    requests = [query(16), query(16)]
    args, _ = batcher.batch(requests)
    assert args[0].shape == (2, 16)
    assert batcher.padded_length(16) == 16 and batcher.padded_length(17) == 24


def test_max_length_caps_the_rounded_length() -> None:
    batcher = SeqBatcher([0, 0], max_length=10, pad_to_multiple_of=8)
    args, context = batcher.batch([query(9), query(3)])
    assert args[0].shape == (2, 10)
    assert [r[0].shape[-1] for r in batcher.unbatch(args, context)] == [9, 3]


def test_buckets_hold_requests_by_their_own_length() -> None:
    batcher = BucketSeqBatcher([0, 0], buckets=[16, 32], pad_to_multiple_of=8)
    assert batcher.inspect(query(16)).key != batcher.inspect(query(17)).key
    batched, _ = batcher.batch([query(17), query(18)])
    assert len(batched) == 1 and batched[0][0].shape == (2, 24)  # one bucket, rounded to 24


def test_length_aware_cuts_count_the_rounded_length() -> None:
    # Four of length 1 and four of length 8, a call worth 10 tokens. Unrounded, two
    # batches (2 x 10 + 4 + 32 = 56) beat one (10 + 64 = 74); rounded to 8, the short
    # ones cost as much as the long ones, and one batch (74) beats two (84).
    items = [Waiting(RequestInfo(n, 1, None), 0.0) for n in [1] * 4 + [8] * 4]
    limits = BatchLimits(8)
    plain = LengthAwareBatcher([0], call_cost_tokens=10).select(items, limits, 1.0)
    rounded = LengthAwareBatcher([0], call_cost_tokens=10, pad_to_multiple_of=8).select(
        items, limits, 1.0
    )
    assert sorted(plain.indices) == [0, 1, 2, 3]
    assert sorted(rounded.indices) == list(range(8))
