"""Choosing each row's next token: greedy, or sampled from the row's own generator.

A greedy row takes the argmax of its logits. A sampled row (``temperature > 0``)
divides its logits by its temperature, keeps its ``top_k`` most likely tokens and
then the smallest set of them whose probability reaches ``top_p`` (the order
Hugging Face ``generate`` applies them), and draws one token by inverse CDF with
one uniform number from its *own* ``torch.Generator``. Each row's draw depends on
its own logits and its own generator only, so a seeded request gets the same
tokens whatever shares its batch and whenever it joined (given the same logits,
which is the step-wise protocol's contract). Sampled rows are computed together
(one sort for all of them), in float64, on the logits' device; on a CPU the sort
is NumPy's (several times faster than torch's there).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidRequestError

__all__ = ["RowSampler", "checked_sampler", "checked_stop_ids", "next_tokens"]

_SEED_LIMIT = 2**64  # torch.Generator.manual_seed takes 0 <= seed < 2**64


class RowSampler:
    """One request's sampling settings and its random generator (used by the worker only)."""

    __slots__ = ("temperature", "top_k", "top_p", "seed", "generator")

    def __init__(self, temperature: float, top_k: int | None, top_p: float, seed: int) -> None:
        import torch

        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def uniform(self) -> float:
        """The next number in ``[0, 1)`` of this row's generator (one per token)."""
        import torch

        return float(torch.rand((), generator=self.generator, dtype=torch.float64))


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise InvalidRequestError(f"{name} must be a number, got {value!r}")
    return float(value)


def checked_sampler(
    temperature: Any, top_k: Any, top_p: Any, seed: Any
) -> RowSampler | None:
    """The row's sampler, ``None`` for greedy decoding (``temperature == 0``).

    Raises :class:`InvalidRequestError` naming the bad value: a temperature that
    is negative or not finite, ``top_k < 1``, ``top_p`` outside ``(0, 1]``, a
    seed that is not an integer in ``[0, 2**64)``. Every value is checked even
    when greedy decoding ignores it.
    """
    temperature = _number("temperature", temperature)
    if not 0 <= temperature < math.inf:
        raise InvalidRequestError(
            f"temperature must be >= 0 and finite (0: greedy), got {temperature!r}"
        )
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)
                              or top_k < 1):
        raise InvalidRequestError(f"top_k must be an integer >= 1 or None, got {top_k!r}")
    top_p = _number("top_p", top_p)
    if not 0 < top_p <= 1:
        raise InvalidRequestError(f"top_p must be in (0, 1], got {top_p!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                             or not 0 <= seed < _SEED_LIMIT):
        raise InvalidRequestError(
            f"seed must be an integer in [0, 2**64) or None, got {seed!r}"
        )
    if temperature == 0:
        return None
    if seed is None:
        import torch

        seed = torch.Generator().seed()  # from the OS's randomness
    return RowSampler(temperature, top_k, top_p, seed)


def checked_stop_ids(stop_token_ids: Any, vocab_size: int | None) -> frozenset[int]:
    """``stop_token_ids`` as a set of ids in the vocabulary, or :class:`InvalidRequestError`."""
    if isinstance(stop_token_ids, (str, bytes)) or not isinstance(stop_token_ids, Iterable):
        raise InvalidRequestError(
            f"stop_token_ids must be a collection of token ids, got {stop_token_ids!r}"
        )
    ids = list(stop_token_ids)
    for token in ids:
        if isinstance(token, bool) or not isinstance(token, int):
            raise InvalidRequestError(
                f"stop_token_ids must hold integer token ids, got {token!r} "
                f"({type(token).__name__})"
            )
        if token < 0 or (vocab_size is not None and token >= vocab_size):
            raise InvalidRequestError(
                f"stop token id {token} is outside the model's vocabulary "
                f"range(0, {vocab_size})"
            )
    return frozenset(ids)


def next_tokens(logits: Any, samplers: Sequence[RowSampler | None]) -> list[int]:
    """Row ``i``'s next token from ``logits[i]``: argmax, or a draw by ``samplers[i]``.

    ``logits`` is ``(rows, vocab)``, a torch tensor or a NumPy array.
    """
    tokens = _argmax(logits)
    sampled = [i for i, s in enumerate(samplers) if s is not None]
    if sampled:
        drawn = _draw(logits, [samplers[i] for i in sampled], sampled)  # type: ignore[misc]
        for i, token in zip(sampled, drawn):
            tokens[i] = token
    return tokens


def _argmax(logits: Any) -> list[int]:
    """The argmax of each row (the first one on ties), as ints."""
    if isinstance(logits, np.ndarray):
        return logits.argmax(-1).tolist()
    if logits.device.type == "cpu":  # NumPy's argmax is vectorised; torch's CPU one is not
        return logits.detach().numpy().argmax(-1).tolist()
    return logits.argmax(-1).tolist()


def _draw(logits: Any, samplers: list[RowSampler], rows: list[int]) -> list[int]:
    """One token for each of ``rows``, drawn with its sampler (see the module docstring)."""
    import torch

    x = torch.as_tensor(logits)
    device = x.device
    index = torch.tensor(rows, device=device)
    x = x.index_select(0, index).to(torch.float64)
    x = x / torch.tensor([s.temperature for s in samplers], dtype=torch.float64,
                         device=device)[:, None]
    uniforms = torch.tensor([s.uniform() for s in samplers], dtype=torch.float64,
                            device=device)[:, None]
    vocab = x.shape[1]
    if all(s.top_k is None and s.top_p == 1 for s in samplers):  # no sort needed
        probs = torch.softmax(x, dim=-1)
        order = None
    else:
        x, order = _sort_descending(x)
        ks = torch.tensor([vocab if s.top_k is None else min(s.top_k, vocab) for s in samplers],
                          device=device)[:, None]
        dropped = torch.arange(vocab, device=device)[None, :] >= ks
        probs = torch.softmax(x.masked_fill(dropped, -math.inf), dim=-1)
        ps = torch.tensor([s.top_p for s in samplers], dtype=torch.float64,
                          device=device)[:, None]
        # a token leaves once the more likely ones reach top_p (the first one always stays)
        dropped |= (probs.cumsum(-1) - probs) >= ps
        probs = probs.masked_fill(dropped, 0.0)
    cdf = probs.cumsum(-1)
    picked = torch.searchsorted(cdf, uniforms * cdf[:, -1:], right=True)
    if bool((picked >= vocab).any()):  # u * total rounded up to the total: the last one kept
        picked = torch.where(picked >= vocab, cdf.argmax(-1, keepdim=True), picked)
    if order is not None:
        picked = order.gather(1, picked)
    return picked[:, 0].tolist()


def _sort_descending(x: Any) -> tuple[Any, Any]:
    """``x`` sorted along its last dimension, largest first (stable), and the order."""
    import torch

    if x.device.type != "cpu":
        return torch.sort(x, dim=-1, descending=True, stable=True)
    order = np.argsort(-x.numpy(), axis=-1, kind="stable")
    sorted_x = np.take_along_axis(x.numpy(), order, axis=-1)
    return torch.from_numpy(sorted_x), torch.from_numpy(order)
