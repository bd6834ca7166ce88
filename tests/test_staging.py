"""The stagers: a batch moved to its worker's device, and pinned double buffering."""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import numpy as np
import pytest
import torch

from batch_inference._staging import (
    NO_WAIT,
    DeviceMover,
    HostBuffers,
    PinnedStager,
    make_stager,
)
from batch_inference.errors import ConfigurationError

Pair = namedtuple("Pair", ["ids", "mask"])


def nested_batch() -> tuple[Any, ...]:
    ids = torch.arange(12).reshape(3, 4)
    return (
        ids,
        [torch.ones(3, 4, dtype=torch.bool), torch.zeros(3, dtype=torch.float16)],
        {"pair": Pair(ids.t(), torch.full((3,), 7.5)), "note": "kept", "n": 3},
        np.arange(3),
        None,
    )


def tensors_of(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for item in value.values() for t in tensors_of(item)]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in tensors_of(item)]
    return []


def test_no_device_stages_the_batch_as_it_is() -> None:
    batch = nested_batch()
    stager = make_stager(None)
    args, ready = stager.stage(batch)
    assert args is batch and ready is NO_WAIT
    ready.wait()


def test_a_cpu_device_copies_nothing() -> None:
    batch = nested_batch()
    stager = make_stager("cpu")
    assert isinstance(stager, DeviceMover)
    args, ready = stager.stage(batch)
    assert ready is NO_WAIT
    got, expected = tensors_of(args), tensors_of(batch)
    assert len(got) == len(expected) == 5
    assert all(a is b for a, b in zip(got, expected))


def test_the_meta_device_really_receives_every_nested_tensor() -> None:
    batch = nested_batch()
    args, ready = make_stager(torch.device("meta")).stage(batch)
    ready.wait()
    moved = tensors_of(args)
    assert [t.device.type for t in moved] == ["meta"] * 5
    assert [(t.shape, t.dtype) for t in moved] == [(t.shape, t.dtype) for t in tensors_of(batch)]
    assert isinstance(args, tuple) and isinstance(args[1], list)
    assert isinstance(args[2]["pair"], Pair)
    assert args[2]["note"] == "kept" and args[2]["n"] == 3
    assert args[3] is batch[3] and args[4] is None


@pytest.mark.parametrize("device", ["nonsense", 3.5])
def test_a_value_that_is_no_device_is_refused(device: Any) -> None:
    with pytest.raises(ConfigurationError, match=repr(device).replace(".", r"\.")):
        make_stager(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_cuda_device_without_cuda_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="'cuda:0' needs CUDA"):
        make_stager("cuda:0")


def test_host_buffers_are_reused_slot_after_slot() -> None:
    buffers = HostBuffers(slots=2, pin_memory=False)
    batch = [torch.zeros(4, 5), torch.zeros(3, dtype=torch.int64)]
    first = buffers.views(batch)
    second = buffers.views(batch)
    third = buffers.views(batch)
    assert buffers.allocations == 2
    assert first[0].data_ptr() != second[0].data_ptr()  # the batch before is not overwritten
    assert third[0].data_ptr() == first[0].data_ptr()  # its slot comes round again
    assert [(v.shape, v.dtype) for v in third] == [(t.shape, t.dtype) for t in batch]
    assert all(v.data_ptr() % 64 == 0 for v in first + second)


def test_host_buffers_grow_only_when_a_batch_does_not_fit() -> None:
    buffers = HostBuffers(slots=1, pin_memory=False)
    buffers.views([torch.zeros(10)])
    buffers.views([torch.zeros(4, dtype=torch.float16)])
    assert buffers.allocations == 1
    big = buffers.views([torch.zeros(100), torch.zeros(0, 3), torch.zeros(2, dtype=torch.bool)])
    assert buffers.allocations == 2
    assert [v.shape for v in big] == [(100,), (0, 3), (2,)]
    big[0].copy_(torch.arange(100.0))
    assert torch.equal(big[0], torch.arange(100.0))


def test_host_buffers_need_a_slot() -> None:
    with pytest.raises(ConfigurationError, match="slots must be >= 1, got 0"):
        HostBuffers(slots=0, pin_memory=False)


@pytest.mark.gpu
def test_pinned_staging_lands_every_batch_on_the_device_intact() -> None:
    stager = make_stager("cuda")
    assert isinstance(stager, PinnedStager)
    side = torch.cuda.Stream()
    results = []
    for k in range(5):  # more batches than slots: reused buffers must not mix them
        source = torch.full((64, 128), float(k))
        args, ready = stager.stage((source, {"mask": source > 0}))
        with torch.cuda.stream(side):
            ready.wait()
            results.append((args[0] * 2, args[1]["mask"]))
        source.fill_(-1.0)  # the caller's tensor is free once stage() returned
    side.synchronize()
    for k, (doubled, mask) in enumerate(results):
        assert doubled.device.type == "cuda"
        assert torch.equal(doubled.cpu(), torch.full((64, 128), 2.0 * k))
        assert bool(mask.all()) == (k > 0)
    assert stager.buffers.allocations == 2
    assert all(v.is_pinned() for v in stager.buffers.views([torch.zeros(1)]))


@pytest.mark.gpu
def test_pinned_staging_passes_device_tensors_through() -> None:
    on_device = torch.ones(3, device="cuda")
    args, ready = make_stager("cuda").stage((on_device,))
    ready.wait()
    assert args[0] is on_device and ready is NO_WAIT
