"""Choosing each row's next token: greedy, or sampled from the row's own generator.

A greedy row takes the argmax of its logits. A sampled row (``temperature > 0``)
divides its logits by its temperature, keeps its ``top_k`` most likely tokens and
then the smallest set of them whose probability reaches ``top_p`` (the order
Hugging Face ``generate`` applies them), and draws one token by inverse CDF with
one uniform number from its *own* ``torch.Generator``. Each row's draw depends on
its own logits and its own generator only, so a seeded request gets the same
tokens whatever shares its batch and whenever it joined (given the same logits,
which is the step-wise protocol's contract). Sampled rows are computed together,
in float64: with NumPy on a CPU (its sort and reductions are several times
torch's there), with torch on the logits' device otherwise.
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

    ``logits`` is ``(rows, vocab)``, a torch tensor or a NumPy array. Rows that
    sample from the whole vocabulary and rows that keep a top-k or top-p set are
    drawn in two groups: which way a row is drawn depends on its own settings only.
    """
    tokens = _argmax(logits)
    plain, filtered = [], []
    for i, sampler in enumerate(samplers):
        if sampler is not None:
            (plain if sampler.top_k is None and sampler.top_p == 1 else filtered).append(i)
    for rows in (plain, filtered):
        if rows:
            drawn = _draw(logits, [samplers[i] for i in rows], rows)  # type: ignore[misc]
            for i, token in zip(rows, drawn):
                tokens[i] = token
    return tokens


def _argmax(logits: Any) -> list[int]:
    """The argmax of each row (the first one on ties), as ints."""
    if isinstance(logits, np.ndarray):
        return logits.argmax(-1).tolist()
    if logits.device.type == "cpu":  # NumPy's argmax is vectorised; torch's CPU one is not
        return _as_array(logits).argmax(-1).tolist()
    return logits.argmax(-1).tolist()


def _as_array(logits: Any) -> np.ndarray:
    """A CPU tensor as a NumPy array (bfloat16, which NumPy lacks, as float32)."""
    logits = logits.detach()
    if logits.dtype.itemsize == 2 and logits.dtype.is_floating_point:  # float16 or bfloat16
        logits = logits.float()
    return logits.numpy()


def _draw(logits: Any, samplers: list[RowSampler], rows: list[int]) -> list[int]:
    """One token for each of ``rows``, drawn with its sampler (see the module docstring)."""
    uniforms = np.array([s.uniform() for s in samplers])
    if isinstance(logits, np.ndarray) or logits.device.type == "cpu":
        x = logits if isinstance(logits, np.ndarray) else _as_array(logits)
        return _draw_numpy(x if len(rows) == len(x) else x[rows], samplers, uniforms)
    return _draw_torch(logits, samplers, rows, uniforms)


def _draw_numpy(x: np.ndarray, samplers: list[RowSampler], uniforms: np.ndarray) -> list[int]:
    """:func:`_draw` on a CPU, with NumPy (its sort and reductions are several times torch's).

    Top-k and top-p become one threshold per row, found on the row's weights
    (``exp(logit / temperature - max)``) sorted (no argsort): tokens below it
    get weight 0; ties at the threshold stay, as in Hugging Face's warpers. The
    draw is then made in vocabulary order.
    """
    x = x / np.array([s.temperature for s in samplers])[:, None]  # float64 from here on
    weights = np.exp(x - x.max(axis=1, keepdims=True))
    if not all(s.top_k is None and s.top_p == 1 for s in samplers):
        rows = np.arange(len(samplers))
        ranked = np.sort(weights, axis=1)[:, ::-1]  # largest first
        ks = np.array([x.shape[1] if s.top_k is None else min(s.top_k, x.shape[1])
                       for s in samplers])
        threshold = ranked[rows, ks - 1]  # the k-th largest weight
        cumulative = np.cumsum(ranked * (ranked >= threshold[:, None]), axis=1)
        ps = np.array([s.top_p for s in samplers])
        # the smallest set of most likely tokens whose probability reaches top_p
        reached = (cumulative < ps[:, None] * cumulative[:, -1:]).sum(axis=1)
        threshold = np.where(ps < 1, np.maximum(threshold, ranked[rows, reached]), threshold)
        weights *= weights >= threshold[:, None]
    return _pick(np.cumsum(weights, axis=1), uniforms).tolist()


def _pick(cdf: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Inverse CDF: the first token whose cumulative weight exceeds ``u`` times the total."""
    picked = (cdf <= (uniforms * cdf[:, -1])[:, None]).sum(axis=1)
    last = (cdf < cdf[:, -1:]).sum(axis=1)  # where the cdf is full: the last token kept
    return np.minimum(picked, last)  # u * total may round up to the total


def _draw_torch(logits: Any, samplers: list[RowSampler], rows: list[int],
                uniforms: np.ndarray) -> list[int]:
    """:func:`_draw_numpy`'s steps in torch, on the logits' device (a GPU)."""
    import torch

    device = logits.device
    x = logits.index_select(0, torch.tensor(rows, device=device)).to(torch.float64)
    x = x / torch.tensor([s.temperature for s in samplers], dtype=torch.float64,
                         device=device)[:, None]
    weights = torch.exp(x - x.max(dim=1, keepdim=True).values)
    if not all(s.top_k is None and s.top_p == 1 for s in samplers):
        index = torch.arange(len(samplers), device=device)
        ranked = torch.sort(weights, dim=1, descending=True).values
        ks = torch.tensor([x.shape[1] if s.top_k is None else min(s.top_k, x.shape[1])
                           for s in samplers], device=device)
        threshold = ranked[index, ks - 1]
        cumulative = (ranked * (ranked >= threshold[:, None])).cumsum(1)
        ps = torch.tensor([s.top_p for s in samplers], dtype=torch.float64, device=device)
        reached = (cumulative < ps[:, None] * cumulative[:, -1:]).sum(1)
        threshold = torch.where(ps < 1, torch.maximum(threshold, ranked[index, reached]),
                                threshold)
        weights = weights * (weights >= threshold[:, None])
    cdf = weights.cumsum(1)
    targets = torch.as_tensor(uniforms, device=device)[:, None] * cdf[:, -1:]
    picked = torch.minimum((cdf <= targets).sum(1), (cdf < cdf[:, -1:]).sum(1))
    return picked.tolist()
