"""Why a batch starts: ``Selection.reason`` from the batchers, and its inference for others."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from batch_inference.batcher import ConcatBatcher, LengthAwareBatcher
from batch_inference.batcher.base import (
    START_REASONS,
    BatchLimits,
    RequestInfo,
    Selection,
    Waiting,
)


def waiting(*lengths: int, t: float = 0.0, deadline_s: float | None = None,
            key: Any = None) -> list[Waiting]:
    return [Waiting(RequestInfo(n, 1, key), t + 0.001 * i, deadline_s)
            for i, n in enumerate(lengths)]


def test_the_reasons_are_the_five_the_metrics_label() -> None:
    assert START_REASONS == ("full", "token_budget", "model_idle", "delay_elapsed", "deadline")


# ---------------------------------------------------------------------- the default policy
@pytest.mark.parametrize("limits, items, now_s, indices, reason", [
    # no delay, model idle: whatever waits goes
    (BatchLimits(4), waiting(1, 1), 0.0, (0, 1), "model_idle"),
    (BatchLimits(2), waiting(1, 1, 1), 0.0, (0, 1), "full"),
    (BatchLimits(8, max_batch_tokens=5), waiting(3, 3), 0.0, (0,), "token_budget"),
    # with a delay: full at once, by count or by tokens
    (BatchLimits(2, max_delay_s=10.0), waiting(1, 1, 1), 0.0, (0, 1), "full"),
    (BatchLimits(8, max_delay_s=10.0, full_batch_size=3), waiting(1, 1, 1), 0.0, (0, 1, 2),
     "full"),
    (BatchLimits(8, max_batch_tokens=5, max_delay_s=10.0), waiting(3, 3), 0.0, (0,),
     "token_budget"),
    # a partial group: once the oldest has waited max_delay_s
    (BatchLimits(8, max_delay_s=10.0), waiting(1, 1), 10.0, (0, 1), "delay_elapsed"),
    # ... or at once when a member's deadline comes before that
    (BatchLimits(8, max_delay_s=10.0), waiting(1, 1, deadline_s=5.0), 1.0, (0, 1), "deadline"),
    (BatchLimits(8, max_delay_s=10.0), waiting(1, deadline_s=10.0), 1.0, (0,), "deadline"),
    # the model is busy: only a group that cannot grow
    (BatchLimits(2, max_delay_s=10.0, model_busy=True), waiting(1, 1), 0.0, (0, 1), "full"),
    (BatchLimits(8, max_batch_tokens=5, model_busy=True), waiting(3, 3), 0.0, (0,),
     "token_budget"),
])
def test_the_default_policy_says_why_each_batch_starts(
    limits: BatchLimits, items: list[Waiting], now_s: float, indices: tuple[int, ...],
    reason: str,
) -> None:
    batcher = ConcatBatcher()
    selection = batcher.select(items, limits, now_s)
    assert selection == Selection(indices, reason=reason)
    assert batcher.start_reason(items, selection, limits, now_s) == reason


def test_a_deadline_after_the_delay_changes_nothing() -> None:
    limits = BatchLimits(8, max_delay_s=10.0)
    selection = ConcatBatcher().select(waiting(1, 1, deadline_s=10.5), limits, 1.0)
    assert selection == Selection((), wake_at_s=10.0)


def test_a_later_groups_deadline_starts_that_group() -> None:
    items = waiting(1, key="a") + [Waiting(RequestInfo(1, 1, "b"), 0.5, 2.0)]
    selection = ConcatBatcher().select(items, BatchLimits(8, max_delay_s=10.0), 1.0)
    assert selection == Selection((1,), reason="deadline")


def test_nothing_waits_no_reason() -> None:
    assert ConcatBatcher().select([], BatchLimits(8), 0.0).reason is None


# ---------------------------------------------------------------------- LengthAwareBatcher
@pytest.mark.parametrize("limits, now_s, reason", [
    (BatchLimits(8), 0.0, "model_idle"),
    (BatchLimits(8, max_delay_s=10.0), 0.0, "model_idle"),  # it never holds requests back
    (BatchLimits(8, max_delay_s=10.0), 20.0, "delay_elapsed"),
    (BatchLimits(3), 0.0, "full"),
    (BatchLimits(8, max_batch_tokens=12), 0.0, "token_budget"),
])
def test_length_aware_says_why_each_batch_starts(
    limits: BatchLimits, now_s: float, reason: str
) -> None:
    batcher = LengthAwareBatcher(padding_tokens=[0], call_cost_tokens=1000)
    selection = batcher.select(waiting(4, 4, 4, 4), limits, now_s)
    assert selection.indices and selection.reason == reason


def test_length_aware_ahead_chooses_only_full_batches_and_says_which() -> None:
    batcher = LengthAwareBatcher(padding_tokens=[0], call_cost_tokens=1000)
    busy = BatchLimits(4, model_busy=True)
    assert batcher.select(waiting(4, 4), busy, 0.0) == Selection()
    assert batcher.select(waiting(4, 4, 4, 4), busy, 0.0).reason == "full"
    by_tokens = BatchLimits(8, max_batch_tokens=8, model_busy=True)
    assert batcher.select(waiting(4, 4, 4), by_tokens, 0.0).reason == "token_budget"


# ---------------------------------------------------------------------- a batcher that does not say
class OldestOnly(ConcatBatcher):
    """A custom policy that says no reason: the oldest requests, up to ``full_size``."""

    def select(self, waiting: Sequence[Waiting], limits: BatchLimits, now_s: float) -> Selection:
        return Selection(tuple(range(min(len(waiting), limits.full_size))))


@pytest.mark.parametrize("limits, items, now_s, reason", [
    (BatchLimits(2), waiting(1, 1, 1), 0.0, "full"),
    (BatchLimits(8), waiting(1), 0.0, "model_idle"),
    (BatchLimits(8, max_delay_s=5.0), waiting(1), 6.0, "delay_elapsed"),
    (BatchLimits(8, max_delay_s=5.0), waiting(1, deadline_s=2.0), 1.0, "deadline"),
])
def test_the_reason_of_a_selection_that_gives_none_is_inferred(
    limits: BatchLimits, items: list[Waiting], now_s: float, reason: str
) -> None:
    batcher = OldestOnly()
    selection = batcher.select(items, limits, now_s)
    assert selection.reason is None
    assert batcher.start_reason(items, selection, limits, now_s) == reason


def test_an_inferred_token_budget_names_the_request_that_did_not_fit() -> None:
    items = waiting(3, 3, 3)
    limits = BatchLimits(8, max_batch_tokens=7)
    batcher = ConcatBatcher()
    assert batcher.start_reason(items, Selection((0, 1)), limits, 0.0) == "token_budget"
    assert batcher.start_reason(items, Selection((0,)), limits, 0.0) == "model_idle"
