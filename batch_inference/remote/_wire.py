"""The wire format of the remote mode: the one place that encodes and decodes messages.

A message is a list of ZeroMQ frames: frame 0 is a UTF-8 JSON header, the
others hold raw buffers (the bytes of arrays, tensors and ``bytes`` values):
frame 1 the small ones joined, then one frame per large one (see :func:`pack`;
the header's ``"z"`` says which is where). Nothing received is unpickled: a
value is rebuilt only from this schema, so a peer can send data, never code.

Values (``tree`` below) are JSON scalars (``None``, ``bool``, ``int``,
``float``, ``str``), JSON lists (Python lists), or an object with exactly one
tag key:

- ``{"T": [tree, ...]}``: a tuple;
- ``{"D": [[key_tree, value_tree], ...]}``: a dict;
- ``{"B": i}``: ``bytes``, the contents of buffer ``i``;
- ``{"N": i, "d": dtype, "s": shape}``: a NumPy array;
- ``{"P": i, "d": dtype, "s": shape}``: a CPU torch tensor.

Buffer indices count from the item's base (its ``"b"`` field), so a request
encoded in its caller's thread keeps its tree when it joins a message.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import torch

from .. import errors
from ..errors import RemoteModelError, WireFormatError

__all__ = [
    "PROTOCOL_VERSION",
    "Encoded",
    "encode_value",
    "decode_value",
    "pack",
    "unpack",
    "error_payload",
    "error_from_payload",
    "short",
    "peek_seq",
]

PROTOCOL_VERSION = 1
MAX_DEPTH = 32
MAX_DIMS = 32
#: Buffers at least this large travel in frames of their own (see :func:`pack`).
OWN_FRAME_BYTES = 64 * 1024

_NUMPY_DTYPES = frozenset({
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128",
})
_TORCH_DTYPES = _NUMPY_DTYPES | {"bfloat16"}
_NP_DTYPE = {name: np.dtype(name) for name in _NUMPY_DTYPES} | {"bfloat16": np.dtype("int16")}

#: The library's own errors a peer may name; a name outside it becomes a RemoteModelError.
_LIBRARY_ERRORS: dict[str, type[errors.BatchInferenceError]] = {
    name: getattr(errors, name) for name in errors.__all__ if name != "RemoteModelError"
}


class Encoded:
    """One value (or argument tuple) encoded: its JSON tree and the buffers it refers to."""

    __slots__ = ("tree", "buffers", "nbytes")

    def __init__(self, tree: Any, buffers: list[Any]) -> None:
        self.tree = tree
        self.buffers = buffers
        self.nbytes = sum(b.nbytes if type(b) is memoryview else len(b) for b in buffers)


def encode_value(value: Any) -> Encoded:
    """Encode ``value`` (see the module docstring); raises :class:`WireFormatError`."""
    buffers: list[Any] = []
    return Encoded(_encode(value, buffers, 0), buffers)


def _encode(value: Any, buffers: list[Any], depth: int) -> Any:
    kind = type(value)
    if kind is np.ndarray:  # the common cases first: one array, a tuple of arguments
        return _encode_array(value, buffers)
    if kind is tuple and depth < MAX_DEPTH:
        return {"T": [_encode(v, buffers, depth + 1) for v in value]}
    if depth > MAX_DEPTH:
        raise WireFormatError(f"value nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, torch.Tensor):
        return _encode_tensor(value, buffers)
    if isinstance(value, np.ndarray):
        return _encode_array(value, buffers)
    if isinstance(value, np.generic) and value.dtype.name in _NUMPY_DTYPES:
        return value.item()
    if isinstance(value, (bytes, bytearray, memoryview)):
        buffers.append(bytes(value))
        return {"B": len(buffers) - 1}
    if isinstance(value, list):
        return [_encode(v, buffers, depth + 1) for v in value]
    if isinstance(value, tuple):
        return {"T": [_encode(v, buffers, depth + 1) for v in value]}
    if isinstance(value, dict):
        return {"D": [[_encode(k, buffers, depth + 1), _encode(v, buffers, depth + 1)]
                      for k, v in value.items()]}
    raise WireFormatError(
        f"a value of type {type(value).__qualname__} cannot cross between processes "
        "(supported: torch tensors, numpy arrays, None/bool/int/float/str/bytes, "
        "and tuples/lists/dicts of these)"
    )


def _encode_array(array: np.ndarray, buffers: list[Any]) -> dict[str, Any]:
    dtype = array.dtype
    name = dtype.name
    if name not in _NUMPY_DTYPES:
        raise WireFormatError(f"numpy dtype {dtype!s} cannot cross between processes")
    if not (array.flags.c_contiguous and dtype.isnative):
        array = np.ascontiguousarray(array, dtype=dtype.newbyteorder("="))
    buffers.append(array.data if array.ndim else array.reshape(1).data)
    return {"N": len(buffers) - 1, "d": name, "s": list(array.shape)}


def _encode_tensor(tensor: torch.Tensor, buffers: list[Any]) -> dict[str, Any]:
    name = str(tensor.dtype).removeprefix("torch.")
    if name not in _TORCH_DTYPES or tensor.layout != torch.strided:
        raise WireFormatError(
            f"a torch tensor of dtype {tensor.dtype} and layout {tensor.layout} "
            "cannot cross between processes"
        )
    flat = tensor.detach().cpu().contiguous()
    if name == "bfloat16":
        flat = flat.view(torch.int16)
    buffers.append(flat.numpy().reshape(-1).data)
    return {"P": len(buffers) - 1, "d": name, "s": list(tensor.shape)}


def decode_value(tree: Any, buffers: list[bytes | memoryview], base: int = 0) -> Any:
    """Rebuild a value from its tree; raises :class:`WireFormatError` on anything malformed."""
    return _decode(tree, buffers, base, 0)


def _decode(tree: Any, buffers: list[bytes | memoryview], base: int, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise WireFormatError(f"value nested deeper than {MAX_DEPTH} levels")
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    if isinstance(tree, list):
        return [_decode(v, buffers, base, depth + 1) for v in tree]
    if not isinstance(tree, dict) or len(tree) not in (1, 3):
        raise WireFormatError(f"malformed value node {short(tree)}")
    if len(tree) == 1:
        ((tag, body),) = tree.items()
        if tag == "T" and isinstance(body, list):
            return tuple(_decode(v, buffers, base, depth + 1) for v in body)
        if tag == "D" and isinstance(body, list):
            out = {}
            for pair in body:
                if not isinstance(pair, list) or len(pair) != 2:
                    raise WireFormatError(f"malformed dict entry {short(pair)}")
                key = _decode(pair[0], buffers, base, depth + 1)
                try:
                    out[key] = _decode(pair[1], buffers, base, depth + 1)
                except TypeError:
                    raise WireFormatError(f"unhashable dict key {short(pair[0])}") from None
            return out
        if tag == "B":
            return bytes(_buffer(body, buffers, base))
        raise WireFormatError(f"malformed value node {short(tree)}")
    return _decode_array(tree, buffers, base)


def _decode_array(tree: dict[str, Any], buffers: list[bytes | memoryview], base: int) -> Any:
    is_tensor = "P" in tree
    index, dtype, shape = tree.get("P" if is_tensor else "N"), tree.get("d"), tree.get("s")
    allowed = _TORCH_DTYPES if is_tensor else _NUMPY_DTYPES
    if not isinstance(dtype, str) or dtype not in allowed:
        raise WireFormatError(f"unsupported dtype {short(dtype)}")
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(type(n) is int and n >= 0 for n in shape)):
        raise WireFormatError(f"malformed shape {short(shape)}")
    raw = _buffer(index, buffers, base)
    np_dtype = _NP_DTYPE[dtype]
    if math.prod(shape) * np_dtype.itemsize != len(raw):
        raise WireFormatError(
            f"buffer of {len(raw)} bytes does not hold shape {shape} of dtype {dtype}"
        )
    array = np.frombuffer(raw, dtype=np_dtype).reshape(shape).copy()  # writable, owned
    if not is_tensor:
        return array
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor


def _buffer(index: Any, buffers: list[Any], base: int) -> Any:
    if type(index) is not int or not 0 <= base + index < len(buffers) or index < 0:
        raise WireFormatError(f"buffer index {short(index)} out of range")
    return buffers[base + index]


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def pack(header: dict[str, Any], buffers: list[Any]) -> list[Any]:
    """The frames of a message: the JSON header, one frame of small buffers, then large ones.

    Every frame costs a few microseconds to send and receive, so buffers under
    :data:`OWN_FRAME_BYTES` travel joined in one frame; larger ones keep frames
    of their own (sent without a copy). The header's ``"z"`` lists, per buffer,
    its length within the joined frame, or ``-1`` for "the next frame".
    """
    sizes: list[int] = []
    small: list[Any] = []
    large: list[Any] = []
    for buffer in buffers:
        nbytes = buffer.nbytes if type(buffer) is memoryview else len(buffer)
        if nbytes < OWN_FRAME_BYTES:
            sizes.append(nbytes)
            small.append(buffer)
        else:
            sizes.append(-1)
            large.append(buffer)
    if buffers:
        header["z"] = sizes
    return [json.dumps(header, separators=(",", ":")).encode(), b"".join(small), *large]


def unpack(frames: list[bytes], max_message_bytes: int
           ) -> tuple[dict[str, Any], list[memoryview]]:
    """Check a received message's size and header; returns ``(header, buffers)``.

    Raises :class:`WireFormatError` naming what is wrong (size, JSON, fields).
    """
    size = sum(len(f) for f in frames)
    if size > max_message_bytes:
        raise WireFormatError(
            f"message of {size} bytes exceeds max_message_bytes={max_message_bytes}"
        )
    if not frames:
        raise WireFormatError("empty message")
    try:
        header = json.loads(frames[0])
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError
        raise WireFormatError(f"message header is not JSON: {short(str(error))}") from None
    if not isinstance(header, dict) or not isinstance(header.get("kind"), str):
        raise WireFormatError(f"message header has no 'kind': {short(header)}")
    if header.get("v") != PROTOCOL_VERSION:
        raise WireFormatError(
            f"protocol version {short(header.get('v'))}, expected {PROTOCOL_VERSION}"
        )
    return header, _split(header.get("z", []), frames[1:])


def _split(sizes: Any, frames: list[bytes]) -> list[memoryview]:
    """The buffers of a message, as views into its frames (see :func:`pack`)."""
    if not isinstance(sizes, list) or not all(type(n) is int and n >= -1 for n in sizes):
        raise WireFormatError(f"malformed buffer table {short(sizes)}")
    joined = memoryview(frames[0] if frames else b"")
    rest = iter(frames[1:])
    buffers: list[memoryview] = []
    offset = 0
    for nbytes in sizes:
        if nbytes == -1:
            frame = next(rest, None)
            if frame is None:
                raise WireFormatError("buffer table names more frames than the message holds")
            buffers.append(memoryview(frame))
        else:
            buffers.append(joined[offset:offset + nbytes])
            offset += nbytes
    if offset != len(joined) or next(rest, None) is not None:
        raise WireFormatError("buffer table does not match the message's frames")
    return buffers


def peek_seq(frames: list[bytes], max_header_bytes: int) -> int | None:
    """The ``seq`` of a refused message if its header can be read, so its sender can match it."""
    if not frames or len(frames[0]) > max_header_bytes:
        return None
    try:
        seq = json.loads(frames[0]).get("seq")
    except (ValueError, RecursionError, AttributeError):
        return None
    return seq if type(seq) is int else None


def error_payload(error: BaseException, traceback_text: str = "") -> dict[str, str]:
    """Describe an exception for the wire: the library's own errors keep their class."""
    library = isinstance(error, errors.BatchInferenceError) and not isinstance(
        error, RemoteModelError)
    if isinstance(error, RemoteModelError):
        return {"type": error.remote_type, "message": error.remote_message,
                "traceback": error.remote_traceback, "kind": "model"}
    return {"type": type(error).__name__, "message": str(error),
            "traceback": traceback_text, "kind": "library" if library else "model"}


def error_from_payload(payload: Any) -> BaseException:
    """The exception to raise for an error payload; a class is only chosen from a whitelist."""
    if not isinstance(payload, dict):
        return WireFormatError(f"malformed error payload {short(payload)}")
    name = str(payload.get("type", "?"))
    message = str(payload.get("message", ""))
    traceback_text = str(payload.get("traceback", ""))
    cls = _LIBRARY_ERRORS.get(name)
    if payload.get("kind") == "library" and cls is not None:
        error = cls(message)
        error.remote_traceback = traceback_text  # type: ignore[attr-defined]
        return error
    return RemoteModelError(name, message, traceback_text)
