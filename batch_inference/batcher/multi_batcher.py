"""Batchers whose ``batch`` makes several batched requests: the model runs once for each."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from .base import Batcher

__all__ = ["MultiBatcher"]


class MultiBatcher(Batcher):
    """A batcher that turns N requests into K batched requests (K <= N), one model call each.

    batch-inference 1.0's contract, kept as it was: :meth:`batch` returns a
    *list* of batched requests (each a tuple of arguments for
    ``predict_batch``) and a context; the host calls ``predict_batch(*args)``
    once for each, in order (:meth:`run`), and :meth:`unbatch` receives the
    list of their outputs. Use it when the requests the host hands over must
    not share one call (e.g. different input kinds); what the host should
    never batch together at all is better put into
    :attr:`~batch_inference.batcher.base.RequestInfo.key` by :meth:`inspect`,
    so that they never meet in one batch.

    Subclasses define :meth:`batch` and :meth:`unbatch`, as for :class:`Batcher`.
    """

    @abstractmethod
    def batch(self, requests: Sequence[tuple[Any, ...]]) -> tuple[list[tuple[Any, ...]], Any]:
        """Turn N requests into a list of K batched requests.

        Returns
        -------
        batched, context
            ``batched[k]`` is a tuple of arguments for one ``predict_batch``
            call; ``context`` is handed to :meth:`unbatch` with the outputs.
        """

    def run(self, predict_batch: Callable[..., Any], batched: Any) -> list[Any]:
        """Call ``predict_batch(*args)`` once for each batched request; the list of outputs."""
        return [predict_batch(*args) for args in batched]

    @abstractmethod
    def unbatch(self, outputs: Any, context: Any) -> list[Any]:
        """Split the K outputs (a list, one per batched request) into N results, in order."""
