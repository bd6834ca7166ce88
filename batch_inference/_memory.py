"""Freeing what a failed batch held before it is retried in smaller parts.

When ``predict_batch`` runs out of memory, the exception's traceback holds
every frame between the worker and the point of failure, and each frame holds
its local variables: the batch's inputs, activations, partial outputs. While
that traceback is alive, none of that memory comes back, and the smaller
retries run out of memory too. :func:`release_after_oom` clears those frames
(and those of the exceptions chained to it), collects reference cycles, and
empties PyTorch's CUDA cache when CUDA is in use.

What it cannot free: references held elsewhere. The worker must drop its own
references to the failed batch (the batched arguments, the outputs) *before*
calling it, e.g. ``prepared.args = ()`` or ``del args``.
"""

from __future__ import annotations

import gc
import sys
import traceback
from types import TracebackType

__all__ = ["release_after_oom"]


def release_after_oom(error: BaseException, *, keep_traceback: bool = True) -> None:
    """Release the memory a failed call's frames hold; empty the CUDA cache.

    Parameters
    ----------
    error:
        The exception ``predict_batch`` raised (usually an out-of-memory error).
        Its traceback's finished frames are cleared (``frame.clear()``: their
        local variables are dropped), as are those of its ``__cause__`` and
        ``__context__`` chain. Frames still running (the caller's own) are left
        as they are.
    keep_traceback:
        ``True`` (default): the traceback object stays on ``error``, so the
        caller that finally receives the error still sees where it was raised
        (file, line and function of every frame; only the local variables are
        gone). ``False``: ``error.__traceback__`` (and the chain's) is set to
        ``None`` as well.

    Notes
    -----
    ``gc.collect()`` runs once (tensors caught in reference cycles with the
    frames are freed only by the collector); ``torch.cuda.empty_cache()`` runs
    only where torch is imported and CUDA initialised, so that nothing is
    initialised here. Costs a few milliseconds: meant for the rare failure,
    not for every batch.
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        _clear(current.__traceback__)
        if not keep_traceback:
            current.__traceback__ = None
        pending.extend((current.__cause__, current.__context__))
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _clear(tb: TracebackType | None) -> None:
    """``traceback.clear_frames``: drops each finished frame's locals (running ones stay)."""
    if tb is not None:
        traceback.clear_frames(tb)
