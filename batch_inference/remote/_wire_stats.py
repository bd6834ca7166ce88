"""The ``stats`` answer of the remote wire: a host's :class:`~batch_inference.HostStats` as JSON.

A client asks the server ``{"kind": "stats", "seq": n}``; the server answers
``{"kind": "stats", "seq": n, "stats": {...}}`` with its host's stats encoded
here: plain JSON values, the maps keyed by batch size as ``[size, count]``
pairs. Decoding checks every field's type; nothing is unpickled.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import WireFormatError
from ..stats import Histogram, HostStats, Percentiles
from ._wire import short

__all__ = ["decode_stats", "encode_stats"]


def encode_stats(stats: HostStats) -> dict[str, Any]:
    """``stats`` as JSON-ready values."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(stats):
        value = getattr(stats, f.name)
        if f.type == "dict[int, int]":
            value = [[k, n] for k, n in value.items()]
        elif f.type == "dict[str, dict[int, int]]":
            value = {r: [[k, n] for k, n in sizes.items()] for r, sizes in value.items()}
        elif dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        out[f.name] = value
    return out


def decode_stats(tree: Any) -> HostStats:
    """The :class:`HostStats` that :func:`encode_stats` described.

    Raises :class:`~batch_inference.errors.WireFormatError` naming a malformed
    field; fields it does not know are ignored (a newer server), missing ones
    keep their defaults (an older one).
    """
    if not isinstance(tree, dict):
        raise WireFormatError(f"malformed stats {short(tree)}")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(HostStats):
        if f.name in tree:
            values[f.name] = _field(f.type, tree[f.name], f.name)
    return HostStats(**values)


def _field(kind: Any, value: Any, name: str) -> Any:
    if kind == "int" and type(value) is int:
        return value
    if kind == "float" and type(value) in (int, float):
        return float(value)
    if kind == "dict[int, int]":
        return _int_map(value, name)
    if kind == "dict[str, dict[int, int]]" and isinstance(value, dict):
        return {str(r): _int_map(sizes, name) for r, sizes in value.items()}
    if kind in ("Percentiles", "Histogram") and isinstance(value, dict):
        try:
            if kind == "Percentiles":
                p = Percentiles(**value)
                return Percentiles(float(p.p50), float(p.p90), float(p.p99), float(p.max),
                                   int(p.count))
            h = Histogram(**value)
            return Histogram(tuple(float(b) for b in h.bounds),
                             tuple(int(n) for n in h.cumulative), int(h.count), float(h.sum))
        except (TypeError, ValueError):
            pass  # reported below
    raise WireFormatError(f"malformed stats field {name}: {short(value)}")


def _int_map(pairs: Any, name: str) -> dict[int, int]:
    if not isinstance(pairs, list) or not all(
            isinstance(p, list) and len(p) == 2 and type(p[0]) is int and type(p[1]) is int
            for p in pairs):
        raise WireFormatError(f"malformed stats field {name}: {short(pairs)}")
    return {k: n for k, n in pairs}
