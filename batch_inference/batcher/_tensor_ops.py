"""Array operations for the two tensor kinds the built-in batchers handle.

One small class per kind (``"pt"`` for PyTorch, ``"np"`` for NumPy) so that
batchers call ``self.ops.concat(...)`` instead of branching on types.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigurationError

#: ``str(dtype)`` per dtype seen, for :meth:`TensorOps.dtype_name` (a handful of entries).
_DTYPE_NAMES: dict[Any, str] = {}


class TensorOps:
    """Operations a batcher needs on one kind of array."""

    kind: str = ""
    type_name: str = ""

    def is_tensor(self, value: Any) -> bool:
        raise NotImplementedError

    def concat(self, values: Sequence[Any]) -> Any:
        raise NotImplementedError

    def pad_last(self, value: Any, length: int, token: Any) -> Any:
        """Pad ``value`` along its last dimension up to ``length`` with ``token``."""
        raise NotImplementedError

    def narrow(self, value: Any, dim: int, start: int, length: int) -> Any:
        raise NotImplementedError

    def holds(self, value: Any, token: Any) -> bool:
        """Whether ``value``'s dtype represents ``token`` exactly (as padding)."""
        raise NotImplementedError

    def dtype_name(self, value: Any) -> str:
        dtype = value.dtype
        name = _DTYPE_NAMES.get(dtype)
        if name is None:  # str() of a NumPy dtype costs microseconds: once per dtype
            name = _DTYPE_NAMES[dtype] = str(dtype)
        return name


class TorchOps(TensorOps):
    kind = "pt"
    type_name = "torch.Tensor"

    def __init__(self) -> None:
        import torch

        self._torch = torch

    def is_tensor(self, value: Any) -> bool:
        return isinstance(value, self._torch.Tensor)

    def concat(self, values: Sequence[Any]) -> Any:
        if len(values) == 1:
            return values[0]
        return self._torch.cat(list(values), dim=0)

    def pad_last(self, value: Any, length: int, token: Any) -> Any:
        missing = length - value.shape[-1]
        if missing <= 0:
            return value
        fill = value.new_full((*value.shape[:-1], missing), token)
        return self._torch.cat([value, fill], dim=-1)

    def narrow(self, value: Any, dim: int, start: int, length: int) -> Any:
        return value.narrow(dim, start, length)

    def holds(self, value: Any, token: Any) -> bool:
        try:
            stored = self._torch.tensor(token, dtype=value.dtype).item()
        except (RuntimeError, OverflowError, TypeError, ValueError):
            return False
        return _same_number(stored, token)


class NumpyOps(TensorOps):
    kind = "np"
    type_name = "numpy.ndarray"

    def is_tensor(self, value: Any) -> bool:
        return isinstance(value, np.ndarray)

    def concat(self, values: Sequence[Any]) -> Any:
        if len(values) == 1:
            return values[0]
        return np.concatenate(list(values), axis=0)

    def pad_last(self, value: Any, length: int, token: Any) -> Any:
        missing = length - value.shape[-1]
        if missing <= 0:
            return value
        widths = [(0, 0)] * (value.ndim - 1) + [(0, missing)]
        return np.pad(value, widths, mode="constant", constant_values=token)

    def narrow(self, value: Any, dim: int, start: int, length: int) -> Any:
        index = [slice(None)] * value.ndim
        index[dim] = slice(start, start + length)
        return value[tuple(index)]

    def holds(self, value: Any, token: Any) -> bool:
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                stored = np.asarray(token, dtype=value.dtype).item()
        except (OverflowError, TypeError, ValueError):
            return False
        return _same_number(stored, token)


def tensor_ops(kind: str | None) -> tuple[TensorOps, ...]:
    """The operations a batcher accepts: ``"pt"``, ``"np"``, or ``None`` for both."""
    if kind == "pt":
        return (TorchOps(),)
    if kind == "np":
        return (NumpyOps(),)
    if kind is None:
        return (TorchOps(), NumpyOps())
    raise ConfigurationError(f"tensor must be 'pt', 'np' or None, got {kind!r}")


def dtype_name(dtype: Any) -> str:
    """A dtype's name without its library's prefix.

    ``torch.float32``, ``np.float32``, ``np.dtype("float32")`` and ``"float32"``
    all give ``"float32"``; ``torch.int64``/``torch.long`` give ``"int64"``.
    Raises :class:`~batch_inference.errors.ConfigurationError` for a value that
    names no dtype.
    """
    text = str(dtype)
    if text.startswith("torch."):
        return text.removeprefix("torch.")
    try:
        return str(np.dtype(dtype))
    except TypeError:
        pass
    if isinstance(dtype, str):
        import torch

        if isinstance(getattr(torch, dtype, None), torch.dtype):  # e.g. "bfloat16"
            return str(getattr(torch, dtype)).removeprefix("torch.")
    raise ConfigurationError(f"{dtype!r} is not a dtype")


def ops_for(value: Any, accepted: Sequence[TensorOps]) -> TensorOps | None:
    """The first of ``accepted`` that handles ``value``, or ``None``."""
    for ops in accepted:
        if ops.is_tensor(value):
            return ops
    return None


def _same_number(stored: Any, token: Any) -> bool:
    """``stored == token``, with NaN equal to NaN."""
    try:
        return bool(stored == token) or (stored != stored and token != token)
    except TypeError:
        return False
