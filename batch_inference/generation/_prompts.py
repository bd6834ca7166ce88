"""Checks on one generation request, made in the caller's thread before it is queued."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidRequestError


def checked_prompt(prompt: Any, vocab_size: int | None) -> list[int]:
    """``prompt`` as a list of token ids, or :class:`InvalidRequestError` naming what is wrong.

    Accepted: a sequence of ints, or a 1-D (or ``(1, n)``) integer tensor or
    array (torch or NumPy). Refused: floats, bools, an empty prompt, several
    rows, and ids outside ``range(vocab_size)``.
    """
    dtype = getattr(prompt, "dtype", None)
    if dtype is not None:
        name = str(dtype)
        if "int" not in name:  # floats, bools, complex: not token ids
            raise InvalidRequestError(
                f"a prompt must hold integer token ids, got a tensor of dtype {name}"
            )
        shape = tuple(prompt.shape)
        if len(shape) == 2 and shape[0] == 1:
            prompt = prompt[0]
        elif len(shape) != 1:
            raise InvalidRequestError(
                f"a prompt must be one sequence of token ids (shape (n,) or (1, n)), "
                f"got shape {shape}"
            )
        ids = [int(t) for t in prompt.tolist()]
    elif isinstance(prompt, (list, tuple)):
        for token in prompt:
            if isinstance(token, bool) or not isinstance(token, int):
                raise InvalidRequestError(
                    f"a prompt must hold integer token ids, got {token!r} "
                    f"({type(token).__name__})"
                )
        ids = list(prompt)
    else:
        raise InvalidRequestError(
            "a prompt must be a list of token ids or a 1-D integer tensor, "
            f"got {type(prompt).__name__}"
        )
    if not ids:
        raise InvalidRequestError("the prompt is empty: it needs at least one token id")
    if vocab_size is not None:
        for token in ids:
            if not 0 <= token < vocab_size:
                raise InvalidRequestError(
                    f"token id {token} is outside the model's vocabulary range(0, {vocab_size})"
                )
    return ids


def checked_max_new_tokens(value: Any, prompt_length: int, max_positions: int | None) -> int:
    """``max_new_tokens`` when it is a positive int that fits the model's positions."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequestError(f"max_new_tokens must be a positive integer, got {value!r}")
    if max_positions is not None and prompt_length + value > max_positions:
        raise InvalidRequestError(
            f"a prompt of {prompt_length} tokens plus max_new_tokens={value} is "
            f"{prompt_length + value} positions, beyond the model's {max_positions}"
        )
    return value
