"""Choose which waiting sequences go together, so that batches are full and barely padded."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from ..errors import ConfigurationError
from .base import BatchLimits, Selection, StartReason, Waiting
from .seq_batcher import OutputSeqDim, SeqBatcher

__all__ = ["LengthAwareBatcher"]

#: A run of the length-sorted window: positions ``[start, end)`` of ``order``.
_Segment = tuple[int, int]


class LengthAwareBatcher(SeqBatcher):
    """A :class:`SeqBatcher` that forms each batch from requests of similar length.

    No buckets to choose. When the model is free, the batcher looks at the
    oldest waiting requests (the *window*), sorts them by length and cuts the
    sorted run into batches where padding would cost more than a separate
    ``predict_batch`` call: the cuts minimise ``calls x call_cost_tokens +
    padded tokens`` (an exact dynamic programme over the sorted window), within
    ``max_batch_size`` requests and ``max_batch_tokens`` padded tokens per
    batch. Then it dispatches one of those batches:

    * the batch holding the oldest waiting request, so each batch serves the
      oldest first and the sorted window is swept in arrival order;
    * with ``max_delay_s > 0``, once requests have waited that long: every
      request that has (oldest first, within the limits), with the companions
      of its length. So no request waits more than one batch beyond
      ``max_delay_s`` for its batch to start, as long as the due requests fit
      in one batch. Choose ``max_delay_s`` of several batch durations: a
      shorter delay forces badly padded batches.

    Taking the best packed batch first instead (and passing over the oldest
    while it is not due) was measured to be worse under load: the runs it
    passes over pile up and go later as badly padded batches. See
    :mod:`batch_inference.benchmark.simulate` to compare policies on a
    workload of your own.

    The model is never kept idle while requests wait. When the host prepares a
    batch ahead (the model is still busy: ``limits.model_busy``),
    only a *full* batch is chosen: ``max_batch_size`` requests, or one more
    request would pass ``max_batch_tokens``.

    Parameters
    ----------
    padding_tokens, tensor, max_length, output_seq_dim, dtypes, pad_to_multiple_of:
        As for :class:`SeqBatcher` (the cuts count each batch's rounded length).
    call_cost_tokens:
        The fixed cost of one ``predict_batch`` call, in padded tokens: how
        many padding tokens are worth computing to save a call. On a CPU a BERT
        call costs about as much as 30 to 60 tokens (the default, 64, is a safe
        middle); on a GPU, where a call costs about as much as a thousand tokens
        or more, raise it, and batches grow towards ``max_batch_size``.
    window:
        How many of the oldest waiting requests are considered at once;
        ``None`` (default): four times ``max_batch_size``, at most 256 (but
        at least ``max_batch_size``).
    """

    def __init__(
        self,
        padding_tokens: Sequence[Any],
        tensor: str | None = None,
        max_length: int | None = None,
        output_seq_dim: OutputSeqDim = 1,
        *,
        dtypes: Sequence[Any] | None = None,
        call_cost_tokens: float = 64,
        window: int | None = None,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        super().__init__(padding_tokens, tensor, max_length, output_seq_dim, dtypes=dtypes,
                         pad_to_multiple_of=pad_to_multiple_of)
        if isinstance(call_cost_tokens, bool) or not (
            isinstance(call_cost_tokens, (int, float)) and 0 <= call_cost_tokens < math.inf
        ):
            raise ConfigurationError(
                f"call_cost_tokens must be a finite number >= 0, got {call_cost_tokens!r}"
            )
        if window is not None and (
            isinstance(window, bool) or not isinstance(window, int) or window < 1
        ):
            raise ConfigurationError(f"window must be a positive integer or None, got {window!r}")
        self.call_cost_tokens = float(call_cost_tokens)
        self.window = window

    def select(self, waiting: Sequence[Waiting], limits: BatchLimits, now_s: float) -> Selection:
        if not waiting:
            return Selection()
        size = self.window or max(limits.max_batch_size, min(4 * limits.max_batch_size, _WINDOW))
        head = waiting[:size]
        groups: dict[Hashable, list[int]] = {}
        for index, item in enumerate(head):
            groups.setdefault(item.info.key, []).append(index)
        if not limits.model_busy:  # the model is free: the oldest's batch goes now
            oldest_due = now_s - head[0].enqueued_s >= limits.max_delay_s
            chosen = self._next_batch(head, groups[head[0].info.key], limits, now_s, oldest_due)
            reason = self._full_reason(head, list(chosen), limits) or (
                "delay_elapsed" if oldest_due and limits.max_delay_s > 0 else "model_idle")
            return Selection(chosen, reason=reason)
        candidates: list[list[int]] = []
        for members in groups.values():
            order = sorted(members, key=lambda i: head[i].info.length)
            segments = self._partition(head, order, limits)
            candidates.extend(order[start:end] for start, end in segments)
        # The model is busy: only a batch that cannot grow, the oldest's first.
        full = [chosen for chosen in candidates if self._full(head, chosen, limits)]
        if not full:
            return Selection()
        chosen = next((c for c in full if 0 in c), full[0])
        return Selection(tuple(chosen), reason=self._full_reason(head, chosen, limits))

    # ------------------------------------------------------------------ helpers
    def _partition(
        self, head: Sequence[Waiting], order: list[int], limits: BatchLimits
    ) -> list[_Segment]:
        """Cut the length-sorted ``order`` into runs of least total cost.

        ``best[j]`` is the least cost of the first ``j`` requests; a run
        ``[i, j)`` costs ``call_cost_tokens + rows(i..j) x length[j - 1]`` and
        holds at most ``max_batch_size`` requests and ``max_batch_tokens``
        padded tokens (a single request is always allowed).
        """
        count = len(order)
        lengths = [head[i].info.length for i in order]
        if self.pad_to_multiple_of is not None:  # rounding up keeps them sorted
            lengths = [self.padded_length(n) for n in lengths]
        rows = [0] * (count + 1)
        for position, i in enumerate(order):
            rows[position + 1] = rows[position] + head[i].info.rows
        budget = limits.max_batch_tokens
        max_requests = limits.max_batch_size
        call = self.call_cost_tokens + 1e-6  # on a tie, fewer calls
        if min(count, max_requests) > _VECTORISE_ABOVE:
            cut = _cuts_vectorised(lengths, rows, max_requests, budget, call)
        else:
            cut = _cuts(lengths, rows, max_requests, budget, call)
        segments: list[_Segment] = []
        end = count
        while end > 0:
            segments.append((cut[end], end))
            end = cut[end]
        segments.reverse()
        return segments

    def _next_batch(
        self,
        head: Sequence[Waiting],
        members: list[int],
        limits: BatchLimits,
        now_s: float,
        oldest_due: bool,
    ) -> tuple[int, ...]:
        """The next batch: the oldest request's run, or every due request that fits.

        Before the oldest request is due (``oldest_due`` false), and always with
        ``max_delay_s == 0``, it is the oldest request's run of the sorted
        window (so the oldest waiting request is in every batch). Once due,
        usually, that is still the oldest request's run; when requests of
        several runs are due at once, they all go together (oldest first,
        within the limits), joined by the requests of the longest due one's
        run that are no longer than it, so that none of them waits for
        another batch.
        """
        order = sorted(members, key=lambda i: head[i].info.length)
        run_of: dict[int, list[int]] = {}
        for start, end in self._partition(head, order, limits):
            chosen = order[start:end]
            for i in chosen:
                run_of[i] = chosen
        delay_s = limits.max_delay_s
        if not oldest_due or delay_s <= 0:  # the oldest leads, in its own run
            return tuple(run_of[0])
        due = []
        for i in members:  # arrival order: the due requests come first
            if now_s - head[i].enqueued_s < delay_s:
                break
            due.append(i)
        if all(i in run_of[0] for i in due):
            return tuple(run_of[0])
        chosen = []
        for i in due:
            if len(chosen) < limits.max_batch_size and self._fits_with(head, chosen, i, limits):
                chosen.append(i)
        longest = max(chosen, key=lambda i: head[i].info.length)
        length = self.padded_length(head[longest].info.length)  # no longer: no more padding
        for i in sorted(run_of[longest], key=lambda i: -head[i].info.length):
            if len(chosen) >= limits.max_batch_size:
                break
            if i not in chosen and head[i].info.length <= length and self._fits_with(
                head, chosen, i, limits
            ):
                chosen.append(i)
        return tuple(sorted(chosen, key=lambda i: head[i].info.length))

    def _fits_with(
        self, head: Sequence[Waiting], chosen: list[int], index: int, limits: BatchLimits
    ) -> bool:
        """Whether ``index`` may join ``chosen`` within ``max_batch_tokens``."""
        if not chosen or limits.max_batch_tokens is None:
            return True
        infos = [head[i].info for i in chosen] + [head[index].info]
        return self.padded_tokens(infos) <= limits.max_batch_tokens

    def _full(self, head: Sequence[Waiting], chosen: list[int], limits: BatchLimits) -> bool:
        """Whether waiting longer cannot make this batch larger."""
        return self._full_reason(head, chosen, limits) is not None

    def _full_reason(
        self, head: Sequence[Waiting], chosen: list[int], limits: BatchLimits
    ) -> StartReason | None:
        """``"full"`` or ``"token_budget"`` when waiting cannot make ``chosen`` larger."""
        if len(chosen) >= limits.full_size:
            return "full"
        budget = limits.max_batch_tokens
        if budget is None or not chosen:
            return None
        infos = [head[i].info for i in chosen]
        longest = self.padded_length(max(info.length for info in infos))
        return "token_budget" if (sum(info.rows for info in infos) + 1) * longest > budget else None



#: With runs of more requests than this, the cuts are found with NumPy (quicker there).
_VECTORISE_ABOVE = 80
#: The default window: four batches, but at most this many requests.
_WINDOW = 256


def _cuts(
    lengths: list[int], rows: list[int], max_requests: int, budget: int | None, call: float
) -> list[int]:
    """``cut[j]``: where the last run of the best split of the first ``j`` requests starts.

    ``lengths`` is sorted; ``rows`` holds prefix sums of the rows (``rows[0] == 0``).
    """
    count = len(lengths)
    best = [0.0] * (count + 1)
    cut = [0] * (count + 1)
    for end in range(1, count + 1):
        longest = lengths[end - 1]
        total_rows = rows[end]
        least, where = math.inf, end - 1
        for start in range(end - 1, max(0, end - max_requests) - 1, -1):
            padded = (total_rows - rows[start]) * longest
            if budget is not None and padded > budget and start < end - 1:
                break
            value = best[start] + padded
            if value < least:
                least, where = value, start
        best[end] = least + call
        cut[end] = where
    return cut


def _cuts_vectorised(
    lengths: list[int], rows: list[int], max_requests: int, budget: int | None, call: float
) -> list[int]:
    """:func:`_cuts` with the inner minimum taken by NumPy (for large windows)."""
    count = len(lengths)
    prefix = np.asarray(rows, dtype=float)
    best = np.zeros(count + 1)
    cut = [0] * (count + 1)
    for end in range(1, count + 1):
        low = max(0, end - max_requests)
        padded = (prefix[end] - prefix[low:end]) * lengths[end - 1]
        values = best[low:end] + padded
        if budget is not None:
            values[:-1][padded[:-1] > budget] = math.inf  # a single request always fits
        # The last minimum: on a tie, the shorter run (as the loop in _cuts does).
        where = end - 1 - int(np.argmin(values[::-1]))
        best[end] = values[where - low] + call
        cut[end] = where
    return cut
