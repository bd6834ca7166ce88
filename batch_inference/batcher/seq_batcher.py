"""Pad sequences to the longest request of the batch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigurationError, InvalidRequestError, OutputMismatchError
from ._split import _rebuild_mapping, _rebuild_sequence, split_rows
from .base import RequestInfo
from .concat_batcher import ConcatBatcher

__all__ = ["OutputSeqDim", "SeqBatcher"]

#: Where outputs hold the sequence: one dimension for every output, or one entry per output
#: (a list for a tuple/list output, a dict for a dict output); ``None`` trims nothing.
OutputSeqDim = int | None | Sequence[int | None] | Mapping[Any, int | None]


class SeqBatcher(ConcatBatcher):
    """Pad each argument along its last dimension to the longest request, then concatenate.

    Each padded request argument has shape ``(rows, ..., length)``: rows on the
    first dimension, the sequence on the **last** one (as tokenizers return
    ``input_ids`` of shape ``(1, length)``). Outputs are split per request and trimmed back to the
    request's own length on ``output_seq_dim``, so a caller gets what
    ``predict_batch`` on its input alone gives.

    Parameters
    ----------
    padding_tokens:
        One padding value per argument of ``predict_batch``; ``None`` for an
        argument that has no sequence dimension (it is concatenated as is).
    tensor:
        ``"pt"``, ``"np"`` or ``None`` (both).
    max_length:
        Longest sequence accepted; a longer request is refused with
        :class:`~batch_inference.errors.InvalidRequestError`.
    output_seq_dim:
        Dimension of each output that holds the sequence (``1`` for
        ``(batch, seq, hidden)``). An output is trimmed only where that
        dimension has the batch's padded length; ``None`` disables trimming.
        For a model with several outputs, some without a sequence (e.g. a
        pooled ``(batch, hidden)`` output, whose ``hidden`` may equal the padded
        length by chance), give one entry per output: a list for a tuple/list
        output, a dict for a dict output (a missing key is not trimmed), each
        an ``int`` or ``None``.
    dtypes:
        As for :class:`ConcatBatcher`: the dtype each argument must have.
    pad_to_multiple_of:
        Round each batch's padded length up to a multiple of this (``8`` suits
        GPU tensor cores in fp16/bf16); ``None`` (default): the longest
        request's length. With ``max_length`` set, the padded length never
        passes ``max_length`` (it stays the longest request's length if
        rounding would). Outputs are trimmed back per caller as without it.
    """

    def __init__(
        self,
        padding_tokens: Sequence[Any],
        tensor: str | None = None,
        max_length: int | None = None,
        output_seq_dim: OutputSeqDim = 1,
        *,
        dtypes: Sequence[Any] | None = None,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        super().__init__(tensor=tensor, dtypes=dtypes)
        if pad_to_multiple_of is not None and (
            isinstance(pad_to_multiple_of, bool)
            or not isinstance(pad_to_multiple_of, int)
            or pad_to_multiple_of < 1
        ):
            raise ConfigurationError(
                f"pad_to_multiple_of must be a positive integer or None, got {pad_to_multiple_of!r}"
            )
        if isinstance(padding_tokens, (str, bytes)) or not isinstance(padding_tokens, Sequence):
            raise ConfigurationError(
                f"padding_tokens must be a list with one value per argument, got {padding_tokens!r}"
            )
        if all(token is None for token in padding_tokens):
            raise ConfigurationError(
                f"padding_tokens={list(padding_tokens)!r} pads no argument; use ConcatBatcher"
            )
        if max_length is not None and max_length < 1:
            raise ConfigurationError(f"max_length must be >= 1, got {max_length!r}")
        dims = (list(output_seq_dim.values()) if isinstance(output_seq_dim, Mapping)
                else list(output_seq_dim) if isinstance(output_seq_dim, (list, tuple))
                else [output_seq_dim])
        if any(d is not None and (isinstance(d, bool) or not isinstance(d, int) or d < 1)
               for d in dims):
            raise ConfigurationError(
                "output_seq_dim must be >= 1 (0 is the batch dimension), None, or a list/dict "
                f"of those (one per output), got {output_seq_dim!r}"
            )
        self.padding_tokens = list(padding_tokens)
        self.max_length = max_length
        self.pad_to_multiple_of = pad_to_multiple_of
        self.output_seq_dim = output_seq_dim
        # (position, dtype name) -> whether that dtype holds the position's padding token.
        self._token_fits: dict[tuple[int, str], bool] = {}

    def inspect(self, args: tuple[Any, ...]) -> RequestInfo:
        if len(args) != len(self.padding_tokens):
            raise InvalidRequestError(
                f"got {len(args)} arguments, but padding_tokens names {len(self.padding_tokens)} "
                f"(padding_tokens={self.padding_tokens!r})"
            )
        info = super().inspect(args)
        length = None
        for position, (value, token) in enumerate(zip(args, self.padding_tokens)):
            if token is None:
                continue
            if value.ndim < 2:
                raise InvalidRequestError(
                    f"argument {position} has shape {tuple(value.shape)}; a padded argument needs "
                    "(rows, ..., length): pass x[None] / x.unsqueeze(0)"
                )
            n = int(value.shape[-1])
            if length is None:
                length = n
            elif n != length:
                raise InvalidRequestError(
                    f"argument {position} has length {n} but the first padded argument has "
                    f"{length}: padded arguments of one request need the same length"
                )
        assert length is not None
        if length == 0:
            raise InvalidRequestError("the request's sequences are empty (length 0)")
        if self.max_length is not None and length > self.max_length:
            raise InvalidRequestError(
                f"sequence length {length} exceeds max_length={self.max_length}"
            )
        key = tuple(
            (kind, dtype, shape[:-1] if token is not None else shape)
            for (kind, dtype, shape), token in zip(info.key, self.padding_tokens)
        )
        for position, ((_, dtype, _), token) in enumerate(zip(key, self.padding_tokens)):
            if token is not None and not self._holds_token(position, dtype, args[position], token):
                raise InvalidRequestError(
                    f"argument {position} has dtype {dtype.removeprefix('torch.')}, which "
                    f"cannot hold its padding token {token!r}"
                )
        return RequestInfo(length=length, rows=info.rows, key=key)

    def _holds_token(self, position: int, dtype: str, value: Any, token: Any) -> bool:
        fits = self._token_fits.get((position, dtype))
        if fits is None:
            fits = self._token_fits[(position, dtype)] = self._ops(position, value).holds(
                value, token
            )
        return fits

    def padded_tokens(self, infos: Sequence[RequestInfo]) -> int:
        if not infos:
            return 0
        longest = self.padded_length(max(info.length for info in infos))
        return longest * sum(info.rows for info in infos)

    def padded_length(self, longest: int) -> int:
        """The length a batch whose longest request has ``longest`` tokens is padded to."""
        multiple = self.pad_to_multiple_of
        if multiple is None or multiple == 1:
            return longest
        rounded = -(-longest // multiple) * multiple
        if self.max_length is not None and rounded > self.max_length:
            return max(longest, self.max_length)
        return rounded

    def _length(self, request: tuple[Any, ...]) -> int:
        for value, token in zip(request, self.padding_tokens):
            if token is not None:
                return int(value.shape[-1])
        raise AssertionError("unreachable: padding_tokens pads at least one argument")

    def batch(self, requests: Sequence[tuple[Any, ...]]) -> tuple[tuple[Any, ...], Any]:
        lengths = [self._length(request) for request in requests]
        longest = self.padded_length(max(lengths))
        if min(lengths) != longest:
            requests = [self._pad(request, longest) for request in requests]
        batched, rows = super().batch(requests)
        return batched, (rows, lengths, longest)

    def _pad(self, request: tuple[Any, ...], longest: int) -> tuple[Any, ...]:
        return tuple(
            value if token is None else self._ops(position, value).pad_last(value, longest, token)
            for position, (value, token) in enumerate(zip(request, self.padding_tokens))
        )

    def unbatch(self, outputs: Any, context: Any) -> list[Any]:
        rows, lengths, longest = context
        dim = self.output_seq_dim
        if dim is None or min(lengths) == longest:
            return split_rows(outputs, rows)
        if isinstance(dim, int):
            return split_rows(outputs, rows, _trimmer(dim, lengths, longest))
        if isinstance(dim, Mapping) and isinstance(outputs, Mapping):
            parts = {key: split_rows(value, rows, _trimmer(dim.get(key), lengths, longest))
                     for key, value in outputs.items()}
            return [_rebuild_mapping(outputs, {k: p[i] for k, p in parts.items()})
                    for i in range(len(rows))]
        if isinstance(dim, (list, tuple)) and isinstance(outputs, (tuple, list)) \
                and len(dim) == len(outputs):
            items = [split_rows(value, rows, _trimmer(d, lengths, longest))
                     for value, d in zip(outputs, dim)]
            return [_rebuild_sequence(outputs, [p[i] for p in items]) for i in range(len(rows))]
        got = (f"a {type(outputs).__name__} of {len(outputs)}"
               if isinstance(outputs, (tuple, list, Mapping)) else f"a {type(outputs).__name__}")
        raise OutputMismatchError(
            f"output_seq_dim={dim!r} names one dimension per output, but predict_batch "
            f"returned {got}"
        )


def _trimmer(dim: int | None, lengths: list[int], longest: int) -> Any:
    """``trim(piece, index)`` cutting dimension ``dim`` back to each request's length."""
    if dim is None:
        return None

    def trim(piece: Any, index: int) -> Any:
        if piece.ndim > dim and piece.shape[dim] == longest:
            cut = [slice(None)] * piece.ndim
            cut[dim] = slice(0, lengths[index])
            return piece[tuple(cut)]
        return piece

    return trim
