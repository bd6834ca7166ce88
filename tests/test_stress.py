"""Stress: 64 threads and 1,000 asyncio tasks against one host, with failures, timeouts,
cancellations and a bounded queue, all at once.

Every request carries a unique id and a random payload; the model echoes its
input, so a caller can tell that the result it got is the one its own input
produced. The model fails on marked inputs (about 2%) and sleeps at random
(a few hundred microseconds to 2 ms: the workload, not synchronisation).
Callers pick random timeouts, some give up (asyncio tasks cancelled from
outside; submitted futures cancelled by their thread), some wait for room in
the full queue and some do not.

What must hold, for every call:

* it returns or raises within its bound (its timeout plus a slack for a loaded
  2-core machine; calls without a timeout within :data:`NO_TIMEOUT_BOUND_S`);
* a result is the echo of the caller's own input (id and payload);
* an error is one the call allows: the model's failure only for a marked input
  (naming that id alone: isolation), a timeout only with a timeout, a
  cancellation only when it was cancelled, "queue full" only when it did not
  wait for room (or its wait timed out);
* results + errors == calls, and the host drains and stops cleanly;
* the model never saw a request refused with "queue full", nor one whose
  future was cancelled before it started (``future.cancel()`` returned True).

Three endings of the same load: the host drains at the end (``drain``); it is
stopped with ``cancel_pending=True`` in the middle of the load
(``stop-cancel-pending``: callers may also get ``HostStoppedError``, or
``HostNotRunningError`` after the stop); the model raises
``KeyboardInterrupt`` in the middle of the load (``broken``: callers may also
get ``HostBrokenError``). In every case, no call is left waiting.

The run is seeded: the seed is printed; ``BATCH_INFERENCE_STRESS_SEED=<seed>``
replays the same inputs, marks, timeouts and cancellations (thread timing
still varies). Run with ``pytest -s`` to see the figures.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections import Counter
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from batch_inference import (
    HostBrokenError,
    HostNotRunningError,
    HostStoppedError,
    ModelHost,
    QueueFullError,
    RequestTimeoutError,
)

THREADS = 64
CALLS_PER_THREAD = 100
TASKS = 1_000
CALLS_PER_TASK = 5
FAIL_RATE = 0.02
TIMEOUTS_S = [None, None, None, 0.002, 0.01, 0.05, 0.2, 1.0]
SLACK_S = 2.0  # scheduling delay allowed beyond a timeout on a loaded 2-core machine
NO_TIMEOUT_BOUND_S = 30.0
SEED_VARIABLE = "BATCH_INFERENCE_STRESS_SEED"


class ModelFailure(ValueError):
    pass


class StressModel:
    """Echo the input; fail on marked rows; sleep a little at random.

    Its call number ``ending_at`` sets :attr:`midway` (and, with
    ``interrupt=True``, raises ``KeyboardInterrupt``: the host breaks).
    """

    def __init__(self, seed: int, ending_at: int | None = None, interrupt: bool = False) -> None:
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.calls = 0
        self.seen: set[int] = set()
        self.ending_at = ending_at
        self.interrupt = interrupt
        self.midway = threading.Event()

    def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
        with self._lock:
            self.calls += 1
            self.seen.update(int(i) for i in x[:, 0].tolist())
            pause_s = self._rng.choice([0.0, 0.0, 0.0003, 0.001, 0.002])
            ending = self.calls == self.ending_at
        if ending:
            self.midway.set()
            if self.interrupt:
                raise KeyboardInterrupt("the model was interrupted mid-load")
        if pause_s:
            time.sleep(pause_s)  # the model's work, not synchronisation
        marked = x[:, 1] == 1.0
        if bool(marked.any()):
            raise ModelFailure(f"the model refuses ids {x[marked, 0].int().tolist()}")
        return x.clone()


@dataclass
class Plan:
    """One call, decided up front from the seed."""

    request_id: int
    marked: bool
    timeout_s: float | None
    wait_for_queue: bool
    cancel_after_s: float | None  # threads: give up on the submitted future after this

    @property
    def tensor(self) -> torch.Tensor:
        payload = random.Random(self.request_id).random()
        return torch.tensor([[float(self.request_id), 1.0 if self.marked else 0.0, payload]])


@dataclass
class Outcome:
    plan: Plan
    kind: str
    value: Any
    seconds: float
    cancel_requested: bool = False


def make_plan(rng: random.Random, request_id: int, front: str) -> Plan:
    return Plan(
        request_id=request_id,
        marked=rng.random() < FAIL_RATE,
        timeout_s=rng.choice(TIMEOUTS_S),
        wait_for_queue=rng.random() < 0.5,
        cancel_after_s=(rng.choice([0.0, 0.001, 0.005]) if front == "thread"
                        and rng.random() < 0.05 else None),
    )


def classify(error: BaseException) -> str:
    if isinstance(error, ModelFailure):
        return "model_failure"
    if isinstance(error, RequestTimeoutError):
        return "timeout"
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    if isinstance(error, QueueFullError):
        return "queue_full"
    if isinstance(error, HostStoppedError):
        return "stopped"
    if isinstance(error, HostBrokenError):
        return "broken"
    if isinstance(error, HostNotRunningError):
        return "not_running"
    return f"unexpected {type(error).__name__}: {error}"


def thread_call(host: ModelHost, plan: Plan) -> Outcome:
    started = time.monotonic()
    try:
        if plan.cancel_after_s is None:
            value = host.predict(plan.tensor, timeout=plan.timeout_s,
                                 wait_for_queue=plan.wait_for_queue)
            return Outcome(plan, "result", value, time.monotonic() - started)
        future = host.submit(plan.tensor, timeout=plan.timeout_s,
                             wait_for_queue=plan.wait_for_queue)
        try:
            value = future.result(plan.cancel_after_s)
        except FutureTimeout:
            if future.cancel():
                return Outcome(plan, "removed", None, time.monotonic() - started, True)
            value = future.result((plan.timeout_s or NO_TIMEOUT_BOUND_S) + SLACK_S)
        return Outcome(plan, "result", value, time.monotonic() - started, True)
    except BaseException as error:  # noqa: BLE001 - classified below
        return Outcome(plan, classify(error), error, time.monotonic() - started,
                       plan.cancel_after_s is not None)


async def task_calls(host: ModelHost, plans: list[Plan], outcomes: list[Outcome],
                     cancelled: set[int]) -> None:
    for plan in plans:
        started = time.monotonic()
        try:
            value = await host.predict_async(plan.tensor, timeout=plan.timeout_s,
                                             wait_for_queue=plan.wait_for_queue)
            outcomes.append(Outcome(plan, "result", value, time.monotonic() - started))
        except asyncio.CancelledError as error:
            outcomes.append(Outcome(plan, "cancelled", error, time.monotonic() - started,
                                    plan.request_id in cancelled))
            raise
        except Exception as error:  # noqa: BLE001 - classified below
            outcomes.append(Outcome(plan, classify(error), error, time.monotonic() - started))


async def run_tasks(host: ModelHost, plans: list[list[Plan]], cancels: list[float | None],
                    outcomes: list[Outcome]) -> None:
    cancelled: set[int] = set()
    tasks = [asyncio.create_task(task_calls(host, p, outcomes, cancelled)) for p in plans]
    loop = asyncio.get_running_loop()

    def cancel(index: int) -> None:
        if not tasks[index].done():
            cancelled.update(plan.request_id for plan in plans[index])
            tasks[index].cancel()

    for index, delay_s in enumerate(cancels):
        if delay_s is not None:
            loop.call_later(delay_s, cancel, index)
    await asyncio.gather(*tasks, return_exceptions=True)


#: Errors a call may get only because of how the run ends.
ENDING_KINDS = {
    "drain": set(),
    "stop-cancel-pending": {"stopped", "not_running"},
    "broken": {"broken"},
}


def check(outcome: Outcome, ending: str) -> str | None:
    """Why this outcome breaks a rule, or ``None``."""
    plan, kind = outcome.plan, outcome.kind
    bound_s = (plan.timeout_s if plan.timeout_s is not None else NO_TIMEOUT_BOUND_S) + SLACK_S
    if outcome.seconds > bound_s:
        return f"took {outcome.seconds:.3f} s, bound {bound_s:.3f} s"
    if kind == "result":
        if plan.marked:
            return "a marked input got a result"
        if not torch.equal(outcome.value, plan.tensor):
            return f"got someone else's result: {outcome.value.tolist()}"
        return None
    if kind == "model_failure":
        expected = f"the model refuses ids [{plan.request_id}]"
        return None if plan.marked and str(outcome.value) == expected else (
            f"model failure {outcome.value} for marked={plan.marked}")
    if kind == "timeout":
        return None if plan.timeout_s is not None else "timed out without a timeout"
    if kind in ("cancelled", "removed"):
        return None if outcome.cancel_requested else "cancelled without being cancelled"
    if kind == "queue_full":
        return None if not plan.wait_for_queue or plan.timeout_s is not None else (
            "queue full although it waited without a timeout")
    if kind in ENDING_KINDS[ending]:
        return None
    return kind


@pytest.mark.timeout(120)
@pytest.mark.parametrize("ending", list(ENDING_KINDS))
def test_stress_threads_and_tasks_nothing_lost_nothing_hangs(ending: str) -> None:
    seed = int(os.environ.get(SEED_VARIABLE) or random.SystemRandom().randrange(2**32))
    print(f"\nstress ({ending}) seed: {seed} (replay: {SEED_VARIABLE}={seed})")
    rng = random.Random(seed)
    ids = iter(range(1, 10**9))
    thread_plans = [[make_plan(rng, next(ids), "thread") for _ in range(CALLS_PER_THREAD)]
                    for _ in range(THREADS)]
    task_plans = [[make_plan(rng, next(ids), "asyncio") for _ in range(CALLS_PER_TASK)]
                  for _ in range(TASKS)]
    task_cancels = [rng.choice([0.0, 0.002, 0.02, 0.1]) if rng.random() < 0.1 else None
                    for _ in range(TASKS)]
    calls = THREADS * CALLS_PER_THREAD + TASKS * CALLS_PER_TASK

    midway_call = rng.randrange(200, 600)
    model = StressModel(seed, None if ending == "drain" else midway_call, ending == "broken")
    host = ModelHost(model_obj=model, max_batch_size=32, num_workers=2,
                     max_queue_size=256).start()
    stopped: list[bool] = []

    def stop_midway() -> None:
        if model.midway.wait(NO_TIMEOUT_BOUND_S):
            stopped.append(host.stop(cancel_pending=True, timeout=30))
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    start = threading.Barrier(THREADS + 2, timeout=NO_TIMEOUT_BOUND_S)

    def client(plans: list[Plan]) -> None:
        start.wait()
        mine = [thread_call(host, plan) for plan in plans]
        with lock:
            outcomes.extend(mine)

    async_outcomes: list[Outcome] = []

    def event_loop() -> None:
        start.wait()
        asyncio.run(run_tasks(host, task_plans, task_cancels, async_outcomes))

    workers = [threading.Thread(target=client, args=(p,), daemon=True) for p in thread_plans]
    workers.append(threading.Thread(target=event_loop, daemon=True))
    if ending == "stop-cancel-pending":
        workers.append(threading.Thread(target=stop_midway, daemon=True))
    for worker in workers:
        worker.start()
    began = time.monotonic()
    start.wait()
    for worker in workers:
        worker.join(NO_TIMEOUT_BOUND_S * 2)
    wall_s = time.monotonic() - began
    assert not any(w.is_alive() for w in workers), "a caller is still waiting"
    assert host.stop(timeout=30) is True
    assert host.broken == (ending == "broken")
    assert stopped == ([True] if ending == "stop-cancel-pending" else [])
    with pytest.raises(HostBrokenError if ending == "broken" else HostNotRunningError):
        host.predict(torch.zeros(1, 3))

    outcomes.extend(async_outcomes)
    # Cancelled tasks make fewer calls: every call that was made has one outcome.
    made = len(outcomes)
    never_made = calls - made
    kinds = Counter(o.kind for o in outcomes)
    problems = [(o.plan, why) for o in outcomes if (why := check(o, ending))]
    stats = host.stats()
    slowest = max(outcomes, key=lambda o: o.seconds)
    over = [o.seconds - o.plan.timeout_s for o in outcomes if o.plan.timeout_s is not None]
    print(f"calls planned     : {calls} ({THREADS} threads x {CALLS_PER_THREAD}, "
          f"{TASKS} tasks x {CALLS_PER_TASK})")
    print(f"calls made        : {made} (not made: {never_made}, their task was cancelled)")
    print(f"outcomes          : {dict(sorted(kinds.items()))}")
    print(f"results + errors  : {sum(kinds.values())}")
    print(f"slowest call      : {slowest.seconds:.3f} s ({slowest.kind}, "
          f"timeout {slowest.plan.timeout_s})")
    print(f"most past timeout : {max(over):.3f} s")
    print(f"wall time         : {wall_s:.2f} s")
    print(f"host              : {stats.batches} predict_batch calls ({stats.retries} retries), "
          f"mean batch {stats.mean_batch_size:.1f}, completed {stats.completed}, "
          f"failed {stats.failed}, timed out {stats.timed_out}, cancelled {stats.cancelled}")
    assert not problems, problems[:10]
    never_run = {o.plan.request_id for o in outcomes
                 if o.kind in ("queue_full", "removed", "not_running", "stopped")}
    assert not never_run & model.seen, sorted(never_run & model.seen)[:10]
    assert sum(kinds.values()) == made
    if ending == "drain":
        assert kinds["result"] > calls // 2  # the workload mostly succeeds
    else:
        assert kinds["result"] > 0 and sum(kinds[k] for k in ENDING_KINDS[ending]) > 0
    # Calls are not made only after their task was cancelled.
    cancelled_tasks = sum(1 for c in task_cancels if c is not None)
    assert never_made <= cancelled_tasks * CALLS_PER_TASK
