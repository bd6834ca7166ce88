"""Splitting a batch's outputs back into one result per request."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..errors import OutputMismatchError

#: ``trim(leaf, request_index) -> leaf``: applied to each request's slice of a tensor.
Trim = Callable[[Any, int], Any]


def _is_array(value: Any) -> bool:
    shape = getattr(value, "shape", None)
    return shape is not None and len(shape) >= 1 and hasattr(value, "__getitem__")


def split_rows(outputs: Any, rows: Sequence[int], trim: Trim | None = None) -> list[Any]:
    """Split ``outputs`` along dimension 0 into pieces of ``rows[i]`` rows.

    ``outputs`` may be an array (NumPy or PyTorch), a tuple or list of outputs,
    a mapping of outputs (a ``dict`` or a transformers ``ModelOutput``), or a
    list with one plain item per row. Each request's result has the same
    structure as ``outputs``.
    """
    total = sum(rows)
    return _split(outputs, rows, total, trim, "outputs")


def _split(value: Any, rows: Sequence[int], total: int, trim: Trim | None, where: str) -> list:
    count = len(rows)
    if _is_array(value):
        got = value.shape[0]
        if got != total:
            raise OutputMismatchError(
                f"predict_batch returned {where} with {got} rows along dimension 0, "
                f"expected {total} (one per input row of the {count} batched requests)"
            )
        pieces = []
        start = 0
        for index, n in enumerate(rows):
            piece = value[start : start + n]
            pieces.append(trim(piece, index) if trim is not None else piece)
            start += n
        return pieces
    if isinstance(value, Mapping):
        per_key = {k: _split(v, rows, total, trim, f"{where}[{k!r}]") for k, v in value.items()}
        return [_rebuild_mapping(value, {k: parts[i] for k, parts in per_key.items()})
                for i in range(count)]
    if isinstance(value, (tuple, list)):
        if value and all(_is_array(v) or isinstance(v, (Mapping, tuple, list)) for v in value) \
                and not _is_row_list(value, total):
            per_item = [_split(v, rows, total, trim, f"{where}[{j}]") for j, v in enumerate(value)]
            return [_rebuild_sequence(value, [parts[i] for parts in per_item])
                    for i in range(count)]
        if len(value) != total:
            raise OutputMismatchError(
                f"predict_batch returned {where} as a {type(value).__name__} of {len(value)} "
                f"items, expected {total} (one per input row)"
            )
        pieces, start = [], 0
        for n in rows:
            pieces.append(type(value)(value[start : start + n]))
            start += n
        return pieces
    raise OutputMismatchError(
        f"predict_batch returned {where} of type {type(value).__name__}, which cannot be split "
        "per request: return an array, a tuple/list/dict of arrays, or a list with one item per row"
    )


def _is_row_list(value: Any, total: int) -> bool:
    """A list of per-row arrays (e.g. outputs of varying length), not a list of outputs."""
    return (
        isinstance(value, list)
        and len(value) == total
        and any(not _is_array(v) or v.shape[0] != total for v in value)
    )


def _rebuild_mapping(original: Mapping, items: dict) -> Any:
    try:
        return type(original)(**items) if type(original) is not dict else items
    except TypeError:
        return dict(items)


def _rebuild_sequence(original: Sequence, items: list) -> Any:
    if isinstance(original, tuple) and hasattr(original, "_fields"):
        return type(original)(*items)
    return type(original)(items)
