"""Where a batch's tensors live: walking nested structures, and the outputs' device.

:func:`map_tensors` applies a function to every tensor of a nested structure
(what the stagers and :func:`to_output_device` share); :func:`to_output_device`
copies a batch's outputs once, before they are split per caller.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from .errors import ConfigurationError

__all__ = ["as_device", "map_tensors", "to_output_device"]


def map_tensors(value: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """``value`` with ``fn`` applied to every tensor in it, structure kept.

    Walks tuples (named tuples too), lists and mappings (a ``dict``, or a
    transformers ``ModelOutput`` rebuilt by its type); anything else (NumPy
    arrays, numbers, ``None``) is returned as is.
    """
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, Mapping):
        items = {key: map_tensors(item, fn) for key, item in value.items()}
        if type(value) is dict:
            return items
        try:
            return type(value)(**items)
        except TypeError:
            return items
    if isinstance(value, tuple):
        items_ = [map_tensors(item, fn) for item in value]
        return type(value)(*items_) if hasattr(value, "_fields") else tuple(items_)
    if isinstance(value, list):
        return [map_tensors(item, fn) for item in value]
    return value


def as_device(device: Any) -> torch.device:
    """``device`` as a ``torch.device``; :class:`ConfigurationError` if it names none."""
    if isinstance(device, torch.device):
        return device
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ConfigurationError(f"{device!r} is not a torch device: {error}") from None


def to_output_device(outputs: Any, device: Any) -> Any:
    """Copy every tensor of a batch's ``outputs`` to ``device``, once per batch.

    The worker calls it on the whole batch's outputs *before* they are split
    per caller, when the host's ``output_device`` is set. Without it (the
    default, ``output_device=None``) each caller's result is a view into the
    batch's output where the model left it: on a GPU, one caller that keeps
    its slice keeps the whole batch's output tensor in GPU memory. With
    ``output_device="cpu"`` the batch is copied to host memory in one transfer
    per tensor and the GPU memory is freed as soon as the batch is done;
    each caller's slice is then a view into the copied (CPU) batch, so a
    caller still holds the whole batch's *host* copy while it keeps its slice.

    Tensors already on ``device`` are returned as they are (no copy); dtype and
    shape are kept; non-tensor values are left alone. A copy from a CUDA
    device to the CPU waits for the model's stream (a blocking copy), so the
    results are complete when the callers receive them.

    Parameters
    ----------
    outputs:
        A tensor, or tuples/lists/dicts (or a ``ModelOutput``) of them.
    device:
        A ``torch.device`` or its name (``"cpu"``, ``"cuda:0"``...).

    Raises
    ------
    ConfigurationError
        ``device`` names no torch device.
    """
    target = as_device(device)
    return map_tensors(outputs, lambda t: t if t.device == target else t.to(target))
