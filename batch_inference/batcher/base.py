"""The batcher contract.

A batcher is pure: no threads, no I/O, no clock of its own. The host asks it
four things:

* :meth:`Batcher.inspect` one request's arguments, in the caller's thread, before
  the request is queued: validate them (raise :class:`~batch_inference.errors.InvalidRequestError`)
  and describe them (:class:`RequestInfo`: length, rows, grouping key);
* :meth:`Batcher.select` which of the waiting requests form the next batch
  (a :class:`Selection`), given their descriptions, the limits and the time,
  and why that batch starts now (its :data:`StartReason`, exported as a
  metric label by :mod:`batch_inference.metrics`);
* :meth:`Batcher.batch` the chosen requests -> ``(batched_args, context)``;
* :meth:`Batcher.run` the model on those batched arguments (one call by default);
* :meth:`Batcher.unbatch` the model's outputs and that context -> one result
  per request, in order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "START_REASONS",
    "Batcher",
    "BatchLimits",
    "RequestInfo",
    "Selection",
    "StartReason",
    "Waiting",
]

#: Why a batch starts (see :class:`Selection`).
StartReason = Literal["full", "token_budget", "model_idle", "delay_elapsed", "deadline"]
#: Every :data:`StartReason`, in the order the docs and metrics list them.
START_REASONS: tuple[StartReason, ...] = (
    "full", "token_budget", "model_idle", "delay_elapsed", "deadline",
)


@dataclass(frozen=True)
class RequestInfo:
    """What the scheduler needs to know about one request.

    Attributes
    ----------
    length:
        Sequence length (tokens) of the request; 1 where there is no sequence.
    rows:
        Rows the request contributes along the batch dimension.
    key:
        Requests whose keys differ never share a batch (e.g. different dtypes,
        different length buckets).
    """

    length: int = 1
    rows: int = 1
    key: Hashable = None


@dataclass(frozen=True)
class Waiting:
    """A queued request as :meth:`Batcher.select` sees it."""

    info: RequestInfo
    enqueued_s: float
    """``time.monotonic()`` when the request was queued."""
    deadline_s: float | None = None
    """``time.monotonic()`` by which the request must start, or ``None`` (no timeout)."""


@dataclass(frozen=True)
class BatchLimits:
    """Limits a selection must respect.

    Attributes
    ----------
    max_batch_size:
        Most requests in one batch.
    max_batch_tokens:
        Most padded tokens (rows x padded length) in one batch, or ``None``.
    max_delay_s:
        Longest a request may be held back waiting for companions.
    full_batch_size:
        A group this large is dispatched at once, even within ``max_delay_s``
        (batch-inference 1.0's ``wait_n``). Defaults to ``max_batch_size``.
    model_busy:
        ``True`` when the batch is chosen *ahead*: the model is still running
        the previous batch, so the chosen batch starts later, when it is free.
        A batcher should then choose only a batch that waiting could not make
        better (one that cannot grow), or nothing; ``max_delay_s`` does not
        apply. ``False`` (the model is idle): the batch starts at once.
    """

    max_batch_size: int
    max_batch_tokens: int | None = None
    max_delay_s: float = 0.0
    full_batch_size: int | None = None
    model_busy: bool = False

    @property
    def full_size(self) -> int:
        """Size at which a group is dispatched at once; never above ``max_batch_size``."""
        return min(self.full_batch_size or self.max_batch_size, self.max_batch_size)


@dataclass(frozen=True)
class Selection:
    """The answer of :meth:`Batcher.select`.

    ``indices`` (into the waiting sequence) form the next batch; when empty,
    nothing is dispatched yet and the host re-asks by ``wake_at_s`` at the
    latest (or when a request arrives).

    ``reason`` says why the batch starts now:

    * ``"full"``: it holds ``full_batch_size`` (``max_batch_size``) requests;
    * ``"token_budget"``: the next request would pass ``max_batch_tokens``;
    * ``"model_idle"``: the model is free and the batch need not wait
      (``max_delay_s == 0``, or a batcher that never holds requests back);
    * ``"delay_elapsed"``: its oldest request has waited ``max_delay_s``;
    * ``"deadline"``: a member's deadline (its ``timeout``) would pass before
      ``max_delay_s`` elapses, so the batch goes at once.

    ``None`` (a batcher that does not say): :meth:`Batcher.start_reason` infers it.
    """

    indices: tuple[int, ...] = ()
    wake_at_s: float | None = None
    reason: StartReason | None = None


class Batcher(ABC):
    """Base class of all batchers; subclass it to write your own."""

    def inspect(self, args: tuple[Any, ...]) -> RequestInfo:
        """Validate one request's arguments and describe them.

        Raise :class:`~batch_inference.errors.InvalidRequestError` for a request
        that cannot be batched. The default accepts anything as one row.
        """
        return RequestInfo()

    def padded_tokens(self, infos: Sequence[RequestInfo]) -> int:
        """Tokens the model computes for these requests batched together.

        The default (no padding) is the sum of rows x length.
        """
        return sum(info.rows * info.length for info in infos)

    def select(self, waiting: Sequence[Waiting], limits: BatchLimits, now_s: float) -> Selection:
        """Choose the next batch among the waiting requests (oldest first).

        The default policy: requests are grouped by :attr:`RequestInfo.key`;
        each group is filled in arrival order up to ``max_batch_size`` and
        ``max_batch_tokens``. With ``max_delay_s == 0`` the oldest request's
        group is dispatched at once. Otherwise a full group is dispatched at
        once, and a partial one when its oldest request has waited
        ``max_delay_s``, or at once when one of its requests' deadline comes
        before that. While :attr:`BatchLimits.model_busy`, only a full group
        is chosen.
        """
        if not waiting:
            return Selection()
        first_key = waiting[0].info.key
        if limits.max_delay_s <= 0 and not limits.model_busy:
            chosen = self._fill(waiting, first_key, limits, limits.max_batch_size)
            reason = self._cut_reason(waiting, chosen, limits) or "model_idle"
            return Selection(tuple(chosen), reason=reason)
        groups: dict[Hashable, list[int]] = {}
        for index, item in enumerate(waiting):
            key = item.info.key
            members = groups.setdefault(key, [])
            if self._fits(waiting, members, index, limits):
                members.append(index)
                if len(members) < limits.full_size:
                    continue
                return Selection(tuple(members), reason="full")
            # This group cannot grow: full by count or by token budget.
            full = len(members) >= limits.full_size
            return Selection(tuple(members), reason="full" if full else "token_budget")
        if limits.model_busy:
            return Selection()
        for members in groups.values():  # oldest group first
            if _deadline_before_due(waiting, members, limits.max_delay_s):
                return Selection(tuple(members), reason="deadline")
        due_s = waiting[0].enqueued_s + limits.max_delay_s
        if now_s >= due_s:
            return Selection(tuple(groups[first_key]), reason="delay_elapsed")
        return Selection((), due_s)

    def start_reason(
        self, waiting: Sequence[Waiting], selection: Selection, limits: BatchLimits, now_s: float
    ) -> StartReason:
        """Why the batch ``selection`` starts now: its ``reason``, else one inferred.

        The inference (for a :meth:`select` that sets no ``reason``): ``"full"``
        at ``full_batch_size`` requests; ``"token_budget"`` when the next
        waiting request of the same key would pass ``max_batch_tokens``;
        ``"delay_elapsed"`` once the oldest chosen request waited
        ``max_delay_s``; ``"deadline"`` when a chosen request's deadline comes
        before that; ``"model_idle"`` otherwise.
        """
        if selection.reason is not None:
            return selection.reason
        chosen = list(selection.indices)
        if not chosen or len(chosen) >= limits.full_size:
            return "full"
        if self._cut_reason(waiting, chosen, limits) is not None:
            return "token_budget"
        delay_s = limits.max_delay_s
        if delay_s > 0 and not limits.model_busy:
            if now_s >= min(waiting[i].enqueued_s for i in chosen) + delay_s:
                return "delay_elapsed"
            if _deadline_before_due(waiting, chosen, delay_s):
                return "deadline"
        return "model_idle"

    def _cut_reason(
        self, waiting: Sequence[Waiting], chosen: list[int], limits: BatchLimits
    ) -> StartReason | None:
        """``"full"`` or ``"token_budget"`` when ``chosen`` cannot grow; ``None`` if it can."""
        if len(chosen) >= limits.full_size:
            return "full"
        if limits.max_batch_tokens is None or not chosen:
            return None
        key, picked = waiting[chosen[0]].info.key, set(chosen)
        for index, item in enumerate(waiting):
            if index not in picked and item.info.key == key:
                return None if self._fits(waiting, chosen, index, limits) else "token_budget"
        return None

    def _fill(
        self, waiting: Sequence[Waiting], key: Hashable, limits: BatchLimits, size: int
    ) -> list[int]:
        """Requests of ``key`` in arrival order, until ``size`` or the token budget."""
        members: list[int] = []
        for index, item in enumerate(waiting):
            if item.info.key != key:
                continue
            if len(members) >= size or not self._fits(waiting, members, index, limits):
                break
            members.append(index)
        return members

    def _fits(
        self, waiting: Sequence[Waiting], members: list[int], index: int, limits: BatchLimits
    ) -> bool:
        """Whether request ``index`` may join ``members`` within the limits."""
        if len(members) >= limits.max_batch_size:
            return False
        if limits.max_batch_tokens is None or not members:
            return True
        infos = [waiting[i].info for i in members] + [waiting[index].info]
        return self.padded_tokens(infos) <= limits.max_batch_tokens

    @abstractmethod
    def batch(self, requests: Sequence[tuple[Any, ...]]) -> tuple[tuple[Any, ...], Any]:
        """Turn N requests (each a tuple of M arguments) into M batched arguments.

        Returns
        -------
        batched_args, context
            ``predict_batch(*batched_args)`` is called; ``context`` is handed to
            :meth:`unbatch` with the outputs.
        """

    def run(self, predict_batch: Callable[..., Any], batched: Any) -> Any:
        """Call the model on what :meth:`batch` returned; the result goes to :meth:`unbatch`.

        The default makes one call, ``predict_batch(*batched)``. A batcher whose
        :meth:`batch` returns several batched requests (batch-inference 1.0's
        ``MultiBatcher``) calls the model once for each and returns the list of
        outputs.
        """
        return predict_batch(*batched)

    @abstractmethod
    def unbatch(self, outputs: Any, context: Any) -> list[Any]:
        """Split the model's outputs into one result per request, in request order."""


def _deadline_before_due(waiting: Sequence[Waiting], members: list[int], delay_s: float) -> bool:
    """Whether a member must start before the group's delay elapses (its deadline is sooner)."""
    due_s = min(waiting[i].enqueued_s for i in members) + delay_s
    for i in members:
        deadline_s = getattr(waiting[i], "deadline_s", None)
        if deadline_s is not None and deadline_s <= due_s:
            return True
    return False
