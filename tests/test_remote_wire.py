"""The remote wire format: round trips, refusals, and the error whitelist."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from batch_inference.errors import (
    QueueFullError,
    RemoteModelError,
    RequestTimeoutError,
    WireFormatError,
)
from batch_inference.remote import _wire


def round_trip(value: Any) -> Any:
    encoded = _wire.encode_value(value)
    frames = _wire.pack({"kind": "x", "v": _wire.PROTOCOL_VERSION, "t": encoded.tree},
                        encoded.buffers)
    frames = [bytes(f) for f in frames]  # what the peer receives
    header, buffers = _wire.unpack(frames, 1 << 20)
    return _wire.decode_value(header["t"], buffers)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
                and torch.equal(a, b))
    if isinstance(a, np.ndarray):
        return (isinstance(b, np.ndarray) and a.dtype == b.dtype
                and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return type(b) is dict and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=False), st.text(max_size=8), st.binary(max_size=8))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.one_of(st.text(max_size=4), st.integers()), inner, max_size=4),
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(values)
def test_plain_values_round_trip(value: Any) -> None:
    assert same(round_trip(value), value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64,
                                   torch.uint8, torch.bool, torch.complex64])
def test_tensors_round_trip_with_dtype_and_shape(dtype: torch.dtype) -> None:
    tensor = (torch.arange(24) % 3).to(dtype).reshape(2, 3, 4)
    back = round_trip({"x": tensor, "empty": tensor[:0], "scalar": tensor[0, 0, 0]})
    for key, original in {"x": tensor, "empty": tensor[:0], "scalar": tensor[0, 0, 0]}.items():
        assert same(back[key], original)
    back["x"][0] = back["x"][1]  # writable, owned by the receiver


def test_arrays_round_trip_including_non_contiguous_and_big_endian() -> None:
    base = np.arange(12, dtype=np.float64).reshape(3, 4)
    view = base[:, ::2]
    swapped = base.astype(">i4")
    back = round_trip((view, swapped))
    assert same(back[0], np.ascontiguousarray(view))
    assert np.array_equal(back[1], swapped) and back[1].dtype == np.dtype("int32")


@pytest.mark.parametrize(
    "value", [object(), {1, 2}, np.array([object()]), torch.ones(2).to_sparse()]
)
def test_unsupported_values_are_refused_by_type(value: Any) -> None:
    with pytest.raises(WireFormatError, match=r"cannot cross"):
        _wire.encode_value(value)


def test_too_deep_a_value_is_refused() -> None:
    value: Any = 1
    for _ in range(_wire.MAX_DEPTH + 2):
        value = [value]
    with pytest.raises(WireFormatError, match="deeper"):
        _wire.encode_value(value)


@pytest.mark.parametrize(
    ("tree", "buffers", "match"),
    [
        ({"N": 0, "d": "object", "s": [1]}, [b"x" * 8], "dtype"),
        ({"N": 0, "d": "float32", "s": [3]}, [b"\0" * 8], "does not hold"),
        ({"N": 0, "d": "float32", "s": [-1]}, [b""], "shape"),
        ({"N": 5, "d": "float32", "s": [1]}, [b"\0" * 4], "out of range"),
        ({"P": -1, "d": "float32", "s": [1]}, [b"\0" * 4], "out of range"),
        ({"B": "0"}, [b""], "out of range"),
        ({"X": 1}, [], "malformed value"),
        ({"D": [[1]]}, [], "dict entry"),
        ({"D": [[[1], 2]]}, [], "unhashable"),
        ({"T": 3}, [], "malformed value"),
    ],
)
def test_malformed_trees_are_refused(tree: Any, buffers: list[bytes], match: str) -> None:
    with pytest.raises(WireFormatError, match=match):
        _wire.decode_value(tree, buffers)


def test_unpack_checks_size_json_kind_and_version() -> None:
    good = _wire.pack({"kind": "call", "v": _wire.PROTOCOL_VERSION}, [b"abc"])
    assert _wire.unpack(good, 1000)[0]["kind"] == "call"
    with pytest.raises(WireFormatError, match="exceeds max_message_bytes=10"):
        _wire.unpack([good[0], b"x" * 100], 10)
    with pytest.raises(WireFormatError, match="not JSON"):
        _wire.unpack([b"\xff{"], 1000)
    with pytest.raises(WireFormatError, match="no 'kind'"):
        _wire.unpack([b"[1, 2]"], 1000)
    with pytest.raises(WireFormatError, match="protocol version 99"):
        _wire.unpack([json.dumps({"kind": "call", "v": 99}).encode()], 1000)


def test_library_errors_keep_their_class_and_others_become_remote_model_errors() -> None:
    back = _wire.error_from_payload(_wire.error_payload(QueueFullError("full: 3")))
    assert type(back) is QueueFullError and str(back) == "full: 3"
    back = _wire.error_from_payload(_wire.error_payload(RequestTimeoutError("late")))
    assert type(back) is RequestTimeoutError
    back = _wire.error_from_payload(_wire.error_payload(KeyError("k"), "Traceback: here"))
    assert isinstance(back, RemoteModelError)
    assert (back.remote_type, back.remote_message, back.remote_traceback) == (
        "KeyError", "'k'", "Traceback: here")


@pytest.mark.parametrize("name", ["SystemExit", "os.system", "RemoteModelError", "__import__"])
def test_a_peer_cannot_choose_a_class_outside_the_whitelist(name: str) -> None:
    back = _wire.error_from_payload({"type": name, "message": "m", "kind": "library"})
    assert type(back) is RemoteModelError and back.remote_type == name


def test_peek_seq_reads_a_refused_message_header_only_when_small() -> None:
    frames = _wire.pack({"kind": "call", "seq": 7}, [b"x" * 50])
    assert _wire.peek_seq(frames, 1000) == 7
    assert _wire.peek_seq(frames, 3) is None
    assert _wire.peek_seq([b"not json"], 1000) is None


def test_small_buffers_share_a_frame_and_large_ones_get_their_own() -> None:
    big = np.zeros(_wire.OWN_FRAME_BYTES // 4 + 1, dtype=np.float32)
    small = np.arange(3, dtype=np.int16)
    encoded = _wire.encode_value((small, big, b"xy", small))
    frames = [bytes(f) for f in _wire.pack({"kind": "x", "v": _wire.PROTOCOL_VERSION},
                                          encoded.buffers)]
    assert len(frames) == 3  # header, the small ones joined, the big one
    header, buffers = _wire.unpack(frames, 1 << 20)
    assert same(_wire.decode_value(encoded.tree, buffers), (small, big, b"xy", small))


@pytest.mark.parametrize("table", [[5], [-1], [1, "2"], "abc", [-2]])
def test_a_buffer_table_that_does_not_match_the_frames_is_refused(table: Any) -> None:
    header = json.dumps({"kind": "call", "v": _wire.PROTOCOL_VERSION, "z": table}).encode()
    with pytest.raises(WireFormatError, match="buffer table"):
        _wire.unpack([header, b"abc"], 1000)
