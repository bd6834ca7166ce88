"""A Ray Data ``map_batches`` callable class that pads with one of our batchers.

Ray Data hands a callable class one *block* (or a ``batch_size`` slice of it)
at a time, as a dict of NumPy columns. Written by hand, such a class pads the
whole slice to its longest row (a tokenizer's ``padding=True``), so a short
sentence beside a long one costs as much as the long one. :class:`BatchedPredictor`
does what the host does instead: each row becomes one request, the requests
are ordered by the batcher's key and length, cut into batches by the
batcher's own :meth:`~batch_inference.batcher.base.Batcher.select`, padded by
its :meth:`~batch_inference.batcher.base.Batcher.batch`, and every row's output
is trimmed back to its own length by
:meth:`~batch_inference.batcher.base.Batcher.unbatch`: each row gets what
``predict_batch`` on that row alone gives.

Nothing here imports Ray: the class is a plain callable (test it by calling it
on a dict of NumPy arrays), and Ray imports it in its workers.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from ..batcher.base import Batcher, BatchLimits, Waiting
from ..errors import ConfigurationError, InvalidRequestError

__all__ = ["BatchedPredictor"]


class BatchedPredictor:
    """Make a ``predict_batch`` model and a batcher a Ray Data ``map_batches`` class.

    ::

        ds = ds.map_batches(
            BatchedPredictor,
            fn_constructor_kwargs={
                "model_cls": MyModel,
                "batcher": SeqBatcher([0, 0], tensor="pt", output_seq_dim=None),
                "columns": ["input_ids", "attention_mask"],
                "output_column": "embedding",
            },
            batch_size=None,     # a whole block per call: the more rows, the less padding
            concurrency=2,       # actors, each building its own model
        )

    Each call takes a dict of columns; row ``i``'s request is
    ``predict_batch(*(column[i][None] for column in columns))`` (each value
    with a leading row dimension of one, as :meth:`~batch_inference.ModelHost.predict`
    expects), as PyTorch tensors for a batcher made with ``tensor="pt"`` and
    NumPy arrays otherwise. It returns the other input columns unchanged and
    the model's output: under ``output_column`` for an array output, one
    column per key for a dict output. Row ``i`` of the output is request
    ``i``'s result without its row dimension, as NumPy; rows of different
    shapes are returned as an object column.

    Parameters
    ----------
    model_cls, model_args, model_kwargs:
        A class with ``predict_batch``, built once per instance (per Ray actor).
    model_obj:
        An already built model instead (for direct calls and tests; Ray would
        copy it into every actor).
    batcher:
        A :class:`~batch_inference.batcher.Batcher`; ``SeqBatcher`` and
        ``LengthAwareBatcher`` pad, ``BucketSeqBatcher`` keeps length buckets
        apart, ``ConcatBatcher`` only concatenates.
    columns:
        The input columns, one per argument of ``predict_batch``, in order.
    max_batch_size, max_batch_tokens:
        Most requests, and most padded tokens, in one ``predict_batch`` call.
    output_column:
        Name of the output column for a model that returns one array.

    Attributes
    ----------
    batches, real_tokens, padded_tokens:
        Counters over this instance's calls: ``predict_batch`` calls, tokens
        of the rows, tokens computed with padding (``real_tokens /
        padded_tokens`` is the padding efficiency).
    """

    def __init__(
        self,
        model_cls: type | None = None,
        batcher: Batcher | None = None,
        *,
        columns: Sequence[str],
        model_obj: Any = None,
        max_batch_size: int = 32,
        max_batch_tokens: int | None = None,
        output_column: str = "output",
        model_args: Sequence[Any] = (),
        model_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if (model_cls is None) == (model_obj is None):
            raise ConfigurationError("give exactly one of model_cls and model_obj")
        if not isinstance(batcher, Batcher):
            raise ConfigurationError(f"batcher must be a Batcher instance, got {batcher!r}")
        if isinstance(columns, str) or not columns or not all(
                isinstance(c, str) for c in columns):
            raise ConfigurationError(
                f"columns must name one column per predict_batch argument, got {columns!r}")
        for name, value in (("max_batch_size", max_batch_size),
                            ("max_batch_tokens", max_batch_tokens)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
        model = model_obj if model_obj is not None else model_cls(  # type: ignore[misc]
            *model_args, **dict(model_kwargs or {}))
        if not callable(getattr(model, "predict_batch", None)):
            raise ConfigurationError(f"{model!r} has no predict_batch method")
        self.model = model
        self.batcher = batcher
        self.columns = list(columns)
        self.limits = BatchLimits(max_batch_size, max_batch_tokens)
        self.output_column = output_column
        self.batches = 0
        self.real_tokens = 0
        self.padded_tokens = 0
        self._torch = getattr(batcher, "tensor", None) == "pt"

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Predict every row of ``batch`` (a dict of columns); see the class docstring."""
        missing = [c for c in self.columns if c not in batch]
        if missing:
            raise InvalidRequestError(
                f"the batch has no column {missing[0]!r}; it has {sorted(batch)!r}")
        count = len(batch[self.columns[0]])
        requests = [tuple(self._argument(batch[c][i]) for c in self.columns)
                    for i in range(count)]
        results: list[Any] = [None] * count
        for indices in self._batches(requests):
            chosen = [requests[i] for i in indices]
            batched, context = self.batcher.batch(chosen)
            outputs = self.batcher.run(self.model.predict_batch, batched)
            for index, result in zip(indices, self.batcher.unbatch(outputs, context)):
                results[index] = result
        passed = {name: value for name, value in batch.items() if name not in self.columns}
        return {**passed, **self._output_columns(results)}

    def _argument(self, value: Any) -> Any:
        array = np.asarray(value)[None]
        if self._torch:
            import torch

            return torch.from_numpy(np.ascontiguousarray(array))
        return array

    def _batches(self, requests: list[tuple[Any, ...]]) -> list[list[int]]:
        """Row indices of each batch: rows ordered by key and length, cut by ``select``."""
        infos = [self.batcher.inspect(request) for request in requests]
        groups: dict[Hashable, list[int]] = {}
        for index, info in enumerate(infos):
            groups.setdefault(info.key, []).append(index)
        order = [i for members in groups.values()
                 for i in sorted(members, key=lambda i: infos[i].length)]
        batches: list[list[int]] = []
        while order:
            waiting = [Waiting(infos[i], 0.0) for i in order]
            chosen = self.batcher.select(waiting, self.limits, 0.0).indices or (0,)
            batch = [order[k] for k in chosen]
            taken = set(chosen)
            order = [i for k, i in enumerate(order) if k not in taken]
            batches.append(batch)
            self.batches += 1
            self.real_tokens += sum(infos[i].rows * infos[i].length for i in batch)
            self.padded_tokens += self.batcher.padded_tokens([infos[i] for i in batch])
        return batches

    def _output_columns(self, results: list[Any]) -> dict[str, Any]:
        if results and isinstance(results[0], Mapping):
            return {key: _column([result[key] for result in results]) for key in results[0]}
        return {self.output_column: _column(results)}


def _column(values: list[Any]) -> Any:
    """One output column: each value without its row dimension, stacked where shapes agree."""
    rows = [_numpy(value)[0] for value in values]
    if rows and all(row.shape == rows[0].shape for row in rows):
        return np.stack(rows)
    column = np.empty(len(rows), dtype=object)
    for index, row in enumerate(rows):  # one by one: NumPy would broadcast equal first dims
        column[index] = row
    return column


def _numpy(value: Any) -> np.ndarray:
    detach = getattr(value, "detach", None)
    if detach is not None:  # a torch tensor
        return detach().cpu().numpy()
    return np.asarray(value)
