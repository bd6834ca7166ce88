"""Concatenate requests along the batch dimension."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import ConfigurationError, InvalidRequestError
from ._split import split_rows
from ._tensor_ops import TensorOps, dtype_name, ops_for, tensor_ops
from .base import Batcher, RequestInfo

__all__ = ["ConcatBatcher"]

#: How many argument signatures (type, dtype, shape) a batcher remembers the inspection of.
_KNOWN_SIGNATURES = 4096


class ConcatBatcher(Batcher):
    """Concatenate each argument of the requests along dimension 0.

    A request may hold several rows (``x.shape[0] > 1``); each caller gets its
    own rows of every output back, in the structure ``predict_batch`` returned
    (an array, a tuple/list or a dict of arrays).

    Parameters
    ----------
    tensor:
        ``"pt"`` (``torch.Tensor`` arguments), ``"np"`` (``numpy.ndarray``), or
        ``None`` to accept both (requests of different kinds never share a batch).
    dtypes:
        The dtype each argument of ``predict_batch`` must have (a ``torch.dtype``,
        a NumPy dtype or a name such as ``"int64"``; ``None`` for any), or
        ``None`` (default) for no check. A request with another dtype, or with
        another number of arguments, is refused in the caller's thread with
        :class:`~batch_inference.errors.InvalidRequestError`. Without it,
        requests of different dtypes (or trailing shapes) are accepted but never
        share a batch: each runs with requests like itself, so it cannot spoil
        the batch of others.
    """

    def __init__(self, tensor: str | None = None, *, dtypes: Sequence[Any] | None = None) -> None:
        self.tensor = tensor
        self._accepted: tuple[TensorOps, ...] = tensor_ops(tensor)
        self._known: dict[tuple, RequestInfo] = {}
        if dtypes is not None and (
            isinstance(dtypes, (str, bytes)) or not isinstance(dtypes, Sequence)
        ):
            raise ConfigurationError(
                f"dtypes must be a list with one dtype (or None) per argument, got {dtypes!r}"
            )
        self.dtypes: list[str | None] | None = (
            None if dtypes is None else [None if d is None else dtype_name(d) for d in dtypes]
        )

    def _ops(self, position: int, value: Any) -> TensorOps:
        ops = ops_for(value, self._accepted)
        if ops is None:
            kinds = " or ".join(o.type_name for o in self._accepted)
            raise InvalidRequestError(
                f"argument {position} is a {type(value).__name__}, expected a {kinds}"
            )
        return ops

    def inspect(self, args: tuple[Any, ...]) -> RequestInfo:
        # The checks depend only on each argument's type, dtype and shape: remember the
        # answer for each such signature (it costs microseconds per request otherwise).
        try:
            known = tuple((type(v), v.dtype, v.shape) for v in args)
            info = self._known.get(known)
        except (AttributeError, TypeError):  # not an array, or an unhashable shape
            return self._inspect(args)
        if info is None:
            info = self._inspect(args)
            if len(self._known) < _KNOWN_SIGNATURES:
                self._known[known] = info
        return info

    def _inspect(self, args: tuple[Any, ...]) -> RequestInfo:
        if not args:
            raise InvalidRequestError("a request needs at least one argument, got none")
        signature = []
        rows = None
        for position, value in enumerate(args):
            ops = self._ops(position, value)
            if value.ndim < 1:
                raise InvalidRequestError(
                    f"argument {position} is a scalar (shape {tuple(value.shape)}); "
                    "it needs a batch dimension: pass x[None] / x.unsqueeze(0)"
                )
            n = int(value.shape[0])
            if n == 0:
                raise InvalidRequestError(
                    f"argument {position} has 0 rows (shape {tuple(value.shape)})"
                )
            if rows is None:
                rows = n
            elif n != rows:
                raise InvalidRequestError(
                    f"argument {position} has {n} rows but argument 0 has {rows}: "
                    "all arguments of a request need the same size along dimension 0"
                )
            dtype = ops.dtype_name(value)
            if self.dtypes is not None:
                self._check_dtype(position, dtype, len(args))
            signature.append((ops.kind, dtype, tuple(value.shape[1:])))
        return RequestInfo(length=1, rows=rows or 1, key=tuple(signature))

    def _check_dtype(self, position: int, dtype: str, count: int) -> None:
        expected = self.dtypes
        assert expected is not None
        if count != len(expected):
            raise InvalidRequestError(
                f"got {count} arguments, but dtypes names {len(expected)} (dtypes={expected!r})"
            )
        want = expected[position]
        if want is not None and dtype.removeprefix("torch.") != want:
            raise InvalidRequestError(
                f"argument {position} has dtype {dtype.removeprefix('torch.')}, expected {want}"
            )

    def batch(self, requests: Sequence[tuple[Any, ...]]) -> tuple[tuple[Any, ...], Any]:
        first = requests[0]
        ops = [self._ops(position, value) for position, value in enumerate(first)]
        batched = tuple(
            ops[position].concat([request[position] for request in requests])
            for position in range(len(first))
        )
        rows = [int(request[0].shape[0]) for request in requests]
        return batched, rows

    def unbatch(self, outputs: Any, context: Any) -> list[Any]:
        return split_rows(outputs, context)
