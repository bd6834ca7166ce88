"""Property tests (hypothesis) for the batchers: unbatch(identity(batch(requests))) == requests.

For random numbers of requests, rows, shapes, dtypes, lengths and padding
tokens, in PyTorch and NumPy: an identity model's output, split by the
batcher, gives each request back its own input. For the sequence batchers the
model sees the requests padded to the longest (with each argument's own
padding token) and every caller gets its output trimmed back to its own
length. Example counts are modest so the suite stays quick in CI.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batch_inference.batcher import BucketSeqBatcher, ConcatBatcher, MultiBatcher, SeqBatcher

pytestmark = pytest.mark.timeout(120)

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

DTYPES = {
    "pt": [torch.float32, torch.float64, torch.int64, torch.int32, torch.uint8, torch.bfloat16],
    "np": [np.float32, np.float64, np.int64, np.int32, np.uint8, np.int8],
}


def make(kind: str, shape: tuple[int, ...], dtype: Any, rng: np.random.Generator) -> Any:
    values = rng.integers(0, 100, size=shape)
    if kind == "np":
        return values.astype(dtype)
    return torch.from_numpy(values).to(dtype)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)


def token_for(dtype: Any) -> st.SearchStrategy:
    """Padding tokens ``dtype`` represents exactly."""
    name = str(dtype).removeprefix("torch.").removeprefix("<class 'numpy.").rstrip("'>")
    if name == "int8":
        return st.integers(-128, 127)
    if name == "uint8":
        return st.integers(0, 255)
    if name in ("int32", "int64"):
        return st.integers(-(2**31), 2**31 - 1)
    if name == "bfloat16":
        return st.integers(-256, 256) | st.sampled_from([0.5, -1.5, float("inf")])
    return st.integers(-(2**20), 2**20) | st.sampled_from([0.5, -1.5, float("-inf")])


def identity(*args: Any) -> Any:
    return args[0] if len(args) == 1 else tuple(args)


kinds = st.sampled_from(["pt", "np"])


@st.composite
def concat_case(draw: st.DrawFn) -> tuple[str, list[tuple[Any, ...]]]:
    kind = draw(kinds)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    arguments = draw(st.integers(1, 3))
    trailing = [tuple(draw(st.lists(st.integers(1, 4), max_size=2))) for _ in range(arguments)]
    dtypes = [draw(st.sampled_from(DTYPES[kind])) for _ in range(arguments)]
    rows = draw(st.lists(st.integers(1, 4), min_size=1, max_size=8))
    requests = [
        tuple(make(kind, (r, *trailing[a]), dtypes[a], rng) for a in range(arguments))
        for r in rows
    ]
    return kind, requests


@SETTINGS
@given(concat_case(), st.sampled_from(["plain", "tuple", "dict"]))
def test_concat_identity_round_trip(case: tuple[str, list[tuple[Any, ...]]], shape: str) -> None:
    kind, requests = case
    batcher = ConcatBatcher(tensor=kind)
    infos = [batcher.inspect(r) for r in requests]
    assert len({i.key for i in infos}) == 1  # same dtypes and trailing shapes: one group
    assert [i.rows for i in infos] == [int(r[0].shape[0]) for r in requests]
    args, context = batcher.batch(requests)
    outputs = identity(*args)
    if shape == "tuple":
        outputs = tuple(args)
    elif shape == "dict":
        outputs = {f"out{j}": a for j, a in enumerate(args)}
    results = batcher.unbatch(outputs, context)
    assert len(results) == len(requests)
    for request, result in zip(requests, results):
        if shape == "dict":
            assert list(result) == [f"out{j}" for j in range(len(request))]
            assert all(same(a, result[f"out{j}"]) for j, a in enumerate(request))
        elif shape == "tuple" or len(request) > 1:
            assert isinstance(result, tuple) and len(result) == len(request)
            assert all(same(a, b) for a, b in zip(request, result))
        else:
            assert same(request[0], result)


@st.composite
def seq_case(draw: st.DrawFn, max_length: int = 40) -> dict[str, Any]:
    kind = draw(kinds)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    middle = tuple(draw(st.lists(st.integers(1, 3), max_size=1)))  # optional (rows, c, length)
    arguments = draw(st.integers(1, 3))
    padded = [draw(st.booleans()) for _ in range(arguments)]
    padded[draw(st.integers(0, arguments - 1))] = True  # at least one padded argument
    dtypes = [draw(st.sampled_from(DTYPES[kind])) for _ in range(arguments)]
    tokens = [draw(token_for(d)) if p else None for p, d in zip(padded, dtypes)]
    lengths = draw(st.lists(st.integers(1, max_length), min_size=1, max_size=8))
    rows = [draw(st.integers(1, 3)) for _ in lengths]
    requests = []
    for n, r in zip(lengths, rows):
        requests.append(tuple(
            make(kind, (r, *middle, n) if p else (r, 2), dtypes[a], rng)
            for a, p in enumerate(padded)
        ))
    seq_dim = 1 + len(middle)
    # One output per argument (the identity model): only the padded ones have a sequence.
    # (With the single default dimension, an unpadded output whose size happens to equal
    # the padded length would be trimmed too: see the test below.)
    dims = seq_dim if arguments == 1 else [seq_dim if p else None for p in padded]
    return {"kind": kind, "tokens": tokens, "requests": requests, "lengths": lengths,
            "seq_dim": seq_dim, "output_dims": dims}


def check_seq_round_trip(batcher: SeqBatcher, case: dict[str, Any],
                         requests: list[tuple[Any, ...]]) -> None:
    tokens = case["tokens"]
    lengths = [batcher.inspect(r).length for r in requests]
    args, context = batcher.batch(requests)
    multi = isinstance(batcher, MultiBatcher)
    if multi:  # requests of one bucket: one batched request
        assert len(args) == 1
        args = args[0]
    longest = max(lengths)
    multiple = batcher.pad_to_multiple_of
    if multiple is not None:  # rounded up to the multiple; no further
        longest = -(-longest // multiple) * multiple
    assert batcher.padded_tokens([batcher.inspect(r) for r in requests]) == longest * sum(
        int(r[0].shape[0]) for r in requests)
    # The model sees every padded argument padded to the longest, with its own token.
    start = 0
    for request, n in zip(requests, lengths):
        rows = int(request[0].shape[0])
        for a, token in enumerate(tokens):
            if token is None:
                continue
            assert args[a].shape[-1] == longest
            piece = args[a][start : start + rows]
            assert same(request[a], piece[..., :n])
            tail = piece[..., n:]
            assert (tail == token).all()
        start += rows
    outputs = identity(*args)
    results = batcher.unbatch([outputs] if multi else outputs, context)
    assert len(results) == len(requests)
    for request, result in zip(requests, results):
        got = result if len(request) > 1 else (result,)
        assert all(same(a, b) for a, b in zip(request, got))


@SETTINGS
@given(seq_case(), st.none() | st.integers(1, 9))
def test_seq_identity_round_trip_trims_back_to_each_input(
    case: dict[str, Any], multiple: int | None
) -> None:
    batcher = SeqBatcher(case["tokens"], tensor=case["kind"], output_seq_dim=case["output_dims"],
                         pad_to_multiple_of=multiple)
    check_seq_round_trip(batcher, case, case["requests"])


@SETTINGS
@given(seq_case(max_length=80), st.lists(st.integers(1, 70), min_size=1, max_size=4, unique=True),
       st.none() | st.sampled_from([2, 8]))
def test_bucket_identity_round_trip_per_bucket(
    case: dict[str, Any], bounds: list[int], multiple: int | None
) -> None:
    buckets = sorted(bounds)
    batcher = BucketSeqBatcher(case["tokens"], buckets=buckets, tensor=case["kind"],
                               output_seq_dim=case["output_dims"], pad_to_multiple_of=multiple)
    groups: dict[Any, list[tuple[Any, ...]]] = {}
    for request in case["requests"]:  # the host never mixes keys: group as it would
        groups.setdefault(batcher.inspect(request).key, []).append(request)
    for requests in groups.values():
        lengths = [batcher.inspect(r).length for r in requests]
        assert len({batcher.bucket_of(n) for n in lengths}) == 1  # one bucket per group
        bucket = batcher.bucket_of(lengths[0])
        if bucket < len(buckets):
            assert max(lengths) <= buckets[bucket]
        if bucket > 0:
            assert min(lengths) > buckets[bucket - 1]
        check_seq_round_trip(batcher, case, requests)


@SETTINGS
@given(seq_case())
def test_seq_output_of_other_length_is_not_trimmed(case: dict[str, Any]) -> None:
    """An output without the padded length on output_seq_dim (e.g. pooled) is only split."""
    batcher = SeqBatcher(case["tokens"], tensor=case["kind"], output_seq_dim=case["seq_dim"])
    requests = case["requests"]
    args, context = batcher.batch(requests)
    first_padded = [t is not None for t in case["tokens"]].index(True)
    pooled = args[first_padded][..., :1]  # one value per row, whatever the length
    results = batcher.unbatch(pooled, context)
    for request, result in zip(requests, results):
        assert same(request[first_padded][..., :1], result)


@SETTINGS
@given(kinds, st.sampled_from(["int8", "uint8"]),
       st.integers(-1000, 1000) | st.sampled_from([0.5, float("nan")]))
def test_a_padding_token_the_dtype_cannot_hold_is_refused(kind: str, dtype: str, token: Any):
    """Refused in inspect (the caller's thread), not later when a batch needs padding."""
    from batch_inference import InvalidRequestError

    low, high = (-128, 127) if dtype == "int8" else (0, 255)
    value = make(kind, (1, 3), getattr(torch if kind == "pt" else np, dtype),
                 np.random.default_rng(0))
    batcher = SeqBatcher([token], tensor=kind)
    if isinstance(token, int) and low <= token <= high:
        assert batcher.inspect((value,)).length == 3
    else:
        with pytest.raises(InvalidRequestError, match=f"dtype {dtype}, which cannot hold"):
            batcher.inspect((value,))


def test_per_output_dims_keep_an_unpadded_output_whose_size_equals_the_padded_length():
    """Found by the round-trip property: a pooled (batch, hidden) output with hidden equal
    to the batch's padded length is cut by the single default dimension; one entry per
    output keeps it whole."""
    requests = [(torch.ones(1, 2, dtype=torch.int64),), (torch.ones(1, 3, dtype=torch.int64),)]
    hidden, pooled = torch.zeros(2, 3, 4), torch.arange(6.0).reshape(2, 3)
    guessing = SeqBatcher([0])
    _, context = guessing.batch(requests)
    assert guessing.unbatch((hidden, pooled), context)[0][1].shape == (1, 2)  # the hazard
    for dims, outputs in [([1, None], (hidden, pooled)),
                          ({"h": 1}, {"h": hidden, "p": pooled})]:
        batcher = SeqBatcher([0], output_seq_dim=dims)
        first, second = batcher.unbatch(outputs, context)
        got = list(first.values()) if isinstance(first, dict) else first
        assert got[0].shape == (1, 2, 4) and torch.equal(got[1], pooled[:1])


# ------------------------------------------------------------------ scheduling: nothing lost
def _length_aware() -> type:
    from batch_inference.batcher.length_aware_batcher import LengthAwareBatcher

    return LengthAwareBatcher


SCHEDULERS = {
    "seq": lambda: SeqBatcher([0]),
    "bucket": lambda: BucketSeqBatcher([0], buckets=[8, 16, 32]),
    "length-aware": lambda: _length_aware()([0]),
    "length-aware, padded to 8": lambda: _length_aware()([0], pad_to_multiple_of=8),
}


@SETTINGS
@given(
    st.sampled_from(sorted(SCHEDULERS)),
    st.lists(st.tuples(st.integers(1, 60), st.booleans()), min_size=1, max_size=40),
    st.integers(1, 8),
    st.none() | st.integers(1, 200),
    st.sampled_from([0.0, 0.01]),
)
def test_select_eventually_takes_every_request_exactly_once(
    name: str, requests: list[tuple[int, bool]], max_batch_size: int,
    max_batch_tokens: int | None, max_delay_s: float,
) -> None:
    """Asked again and again (as the host does), select() never loses, repeats or starves
    a request, never breaks a limit, and never answers "nothing yet" without a future
    time to ask again (the host would wait for a new arrival that may never come)."""
    from batch_inference.batcher import BatchLimits, Waiting

    batcher = SCHEDULERS[name]()
    infos = [
        batcher.inspect((torch.ones(1, n, dtype=torch.int64 if wide else torch.int32),))
        for n, wide in requests
    ]
    limits = BatchLimits(max_batch_size, max_batch_tokens, max_delay_s)
    waiting = [(i, Waiting(info, enqueued_s=0.001 * i)) for i, info in enumerate(infos)]
    taken: list[int] = []
    now_s = 0.0
    for _ in range(4 * len(requests) + 4):
        if not waiting:
            break
        selection = batcher.select([w for _, w in waiting], limits, now_s)
        if not selection.indices:
            assert selection.wake_at_s is not None and selection.wake_at_s > now_s
            now_s = selection.wake_at_s  # the host sleeps until then
            continue
        chosen = [waiting[i] for i in selection.indices]
        assert len(set(selection.indices)) == len(chosen) <= max_batch_size
        assert len({w.info.key for _, w in chosen}) == 1  # one key per batch
        if max_batch_tokens is not None and len(chosen) > 1:
            assert batcher.padded_tokens([w.info for _, w in chosen]) <= max_batch_tokens
        taken.extend(i for i, _ in chosen)
        picked = set(selection.indices)
        waiting = [w for j, w in enumerate(waiting) if j not in picked]
    assert sorted(taken) == list(range(len(requests)))  # every request, exactly once
