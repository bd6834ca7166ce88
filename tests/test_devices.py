"""to_output_device: a batch's outputs copied once, structure, dtype and shape kept."""

from __future__ import annotations

from collections import OrderedDict, namedtuple

import numpy as np
import pytest
import torch

from batch_inference._devices import map_tensors, to_output_device
from batch_inference.errors import ConfigurationError

Out = namedtuple("Out", ["hidden", "pooled"])


def test_outputs_move_to_the_output_device_with_structure_dtype_and_shape() -> None:
    outputs = {
        "hidden": torch.zeros(4, 7, 8, dtype=torch.bfloat16),
        "extra": [Out(torch.ones(4, 8), torch.arange(4)), np.zeros(4), "label"],
    }
    moved = to_output_device(outputs, "meta")
    assert moved["hidden"].device.type == "meta"
    assert (moved["hidden"].shape, moved["hidden"].dtype) == ((4, 7, 8), torch.bfloat16)
    out = moved["extra"][0]
    assert isinstance(out, Out) and out.hidden.device.type == out.pooled.device.type == "meta"
    assert out.pooled.dtype == torch.int64
    assert moved["extra"][1] is outputs["extra"][1] and moved["extra"][2] == "label"


def test_outputs_already_on_the_device_are_not_copied() -> None:
    hidden = torch.randn(2, 3)
    assert to_output_device(hidden, "cpu") is hidden
    assert to_output_device((hidden,), torch.device("cpu"))[0] is hidden


def test_mapping_types_are_rebuilt() -> None:
    outputs = OrderedDict(a=torch.ones(1), b=torch.zeros(1))
    moved = map_tensors(outputs, lambda t: t + 1)
    assert type(moved) is OrderedDict and list(moved) == ["a", "b"]
    assert torch.equal(moved["b"], torch.ones(1))


def test_a_bad_output_device_is_named() -> None:
    with pytest.raises(ConfigurationError, match="'gpu0' is not a torch device"):
        to_output_device(torch.ones(1), "gpu0")


@pytest.mark.gpu
def test_cuda_outputs_come_back_to_the_cpu_complete() -> None:
    hidden = torch.arange(1024.0, device="cuda").reshape(4, 256) * 3
    moved = to_output_device({"hidden": hidden}, "cpu")
    assert moved["hidden"].device.type == "cpu"
    assert torch.equal(moved["hidden"], torch.arange(1024.0).reshape(4, 256) * 3)
