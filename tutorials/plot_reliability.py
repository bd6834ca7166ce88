"""
Reliability: bad input, failures, timeouts, cancellation, overload and shutdown
===============================================================================

What you will learn: what each caller of a :class:`~batch_inference.ModelHost`
gets when something goes wrong, and why no caller is ever left waiting.
Every section runs a short example and prints what happened:

* a **bad request** is refused in its caller's thread, before it is queued;
* a **failing request** fails alone: the host splits the batch and retries
  until it has found it (bounded: at most ``2n - 2`` extra calls);
* an **out-of-memory** error makes the host retry smaller and lower its limit;
* a **deadline** gives its caller a typed error at once, and a request whose
  deadline passed before its batch started is never run;
* a **cancelled** request that has not started is removed;
* **overload** is refused at once (``max_queue_size``) or waited out;
* **shutdown** drains or cancels, and a **broken** model answers everyone.

The last section measures what a bounded queue does to latency under
overload: a table and a figure.

Hardware: any (CPU is fine); the models are a few lines of Python standing in
for a real one. The page takes a few seconds.
"""

# %%
# A model to break
# ----------------
# ``Echo.predict_batch(x)`` returns ``10 * x``; it refuses negative numbers
# (``ValueError`` naming them), and records the rows of every call, so we can
# see which requests the model actually ran. Its ``gate`` holds it busy on
# purpose: while it is closed, new requests wait in the host's queue, which
# makes each example below behave the same on every machine.

import asyncio
import threading
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from batch_inference import (
    HostBrokenError,
    HostNotRunningError,
    InvalidRequestError,
    ModelHost,
    OutputMismatchError,
    QueueFullError,
    RequestTimeoutError,
)
from batch_inference.batcher import SeqBatcher
from batch_inference.benchmark import environment, format_environment, progress, run_mode

MODE = run_mode()
print(format_environment(environment(MODE, weights="none (toy models defined on this page)")))


class Echo:
    def __init__(self, oom_above: int | None = None) -> None:
        self.calls: list[list[float]] = []
        self.gate = threading.Event()
        self.gate.set()  # open: the model runs freely
        self.entered = threading.Event()
        self.oom_above = oom_above

    def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x[:, 0].tolist())
        self.entered.set()
        self.gate.wait()
        if self.oom_above is not None and len(x) > self.oom_above:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory ({len(x)} rows)")
        if (x < 0).any():
            raise ValueError(f"negative input {x[x < 0].tolist()}")
        return 10 * x


def occupy(host: ModelHost, model: Echo) -> object:
    """Close the gate and keep the model busy with one request (its future is returned)."""
    model.gate.clear()
    model.entered.clear()
    busy = host.submit(torch.tensor([[0.0]]))
    model.entered.wait()
    return busy


def outcome(future) -> str:
    """What a caller got, in one line."""
    error = future.exception(timeout=10)
    if error is None:
        return f"result {future.result().tolist()}"
    return f"{type(error).__name__}: {error}"


def x(value: float) -> torch.Tensor:
    return torch.tensor([[float(value)]])


summary: list[dict] = []

# %%
# Bad input fails alone
# ---------------------
# The batcher inspects every request in its caller's thread before it is
# queued. Give it what you know about the model (``dtypes=``, ``max_length=``)
# and it refuses the rest with :class:`~batch_inference.InvalidRequestError`,
# whose message names what is wrong. The requests already waiting are not
# touched. (Without ``dtypes=``, requests of different dtypes are accepted
# but never share a batch, so one cannot spoil the batch of others either.)


class Lengths:
    def predict_batch(self, ids: torch.Tensor) -> torch.Tensor:
        return ids.sum(dim=-1, keepdim=True)


batcher = SeqBatcher(padding_tokens=[0], tensor="pt", max_length=8, dtypes=[torch.int64])
with ModelHost(model_obj=Lengths(), batcher=batcher) as host:
    bad_requests = {
        "two arguments": (torch.ones(1, 3, dtype=torch.int64),) * 2,
        "no batch dimension": (torch.ones(3, dtype=torch.int64),),
        "float32 ids": (torch.ones(1, 3),),
        "a Python list": ([[1, 2, 3]],),
        "empty sequence": (torch.ones(1, 0, dtype=torch.int64),),
        "too long": (torch.ones(1, 9, dtype=torch.int64),),
    }
    for name, args in bad_requests.items():
        try:
            host.predict(*args)
        except InvalidRequestError as error:
            print(f"{name:>20}: InvalidRequestError: {error}")
    print(f"{'a good request':>20}: result {host.predict(torch.ones(1, 5, dtype=torch.int64))}")
summary.append({"what goes wrong": "bad input", "what its caller gets": "InvalidRequestError "
                "at once (never queued)", "what the others get": "their results"})

# %%
# A failing request fails alone
# -----------------------------
# Eight requests wait behind the busy model; two of them are negative, so the
# model raises on their batch. The host splits the batch in halves and retries
# until each failing request stands alone: only those two callers get the
# exception (the original object, raised by the model on that request, with
# its traceback); the six others get their results.

model = Echo()
with ModelHost(model_obj=model, max_batch_size=16) as host:
    busy = occupy(host, model)
    values = [1, 2, -3, 4, 5, 6, -7, 8]
    futures = [host.submit(x(v)) for v in values]
    model.gate.set()
    for v, future in zip(values, futures):
        print(f"request {v:>2}: {outcome(future)}")
    retries = host.stats().retries
print("model calls (rows):", model.calls[1:])
print(f"retries: {retries} (the bound for a batch of {len(values)} is {2 * len(values) - 2})")

# %%
# ``isolate_failures=False`` turns this off: every caller of the batch gets
# the same exception, after one call.

model = Echo()
with ModelHost(model_obj=model, isolate_failures=False) as host:
    busy = occupy(host, model)
    futures = [host.submit(x(v)) for v in [1, -2, 3]]
    model.gate.set()
    for future in futures:
        print(outcome(future))
print("model calls (rows):", model.calls[1:])
summary.append({"what goes wrong": "the model raises on one request",
                "what its caller gets": "the model's own exception",
                "what the others get": "their results (after at most 2n - 2 retries)"})

# %%
# Out of memory: retry smaller, lower the limit
# ---------------------------------------------
# This model runs out of memory above 4 rows (it raises
# ``torch.cuda.OutOfMemoryError``, as PyTorch does on a GPU). Sixteen waiting
# requests: the host halves the batch until it fits, serves everyone, and
# keeps the lowered limit (``host.batch_limit``) for the batches that follow.

model = Echo(oom_above=4)
with ModelHost(model_obj=model, max_batch_size=32) as host:
    busy = occupy(host, model)
    futures = [host.submit(x(v)) for v in range(1, 17)]
    model.gate.set()
    served = sum(f.exception(timeout=10) is None for f in futures)
    print(f"served: {served} of {len(futures)}; batch_limit is now {host.batch_limit}")
print("batch sizes of the calls:", [len(c) for c in model.calls[1:]])
summary.append({"what goes wrong": "out of memory on a big batch",
                "what its caller gets": "its result", "what the others get":
                "their results; the host lowers its batch limit"})

# %%
# Deadlines
# ---------
# ``predict(..., timeout=s)`` (or the host's ``default_timeout_s``): when the
# deadline passes, the caller gets :class:`~batch_inference.RequestTimeoutError`
# at once, even though the model is still busy, and its request leaves the
# queue: the model never runs it.

model = Echo()
with ModelHost(model_obj=model) as host:
    busy = occupy(host, model)
    started = time.perf_counter()
    try:
        host.predict(x(42), timeout=0.05)
    except RequestTimeoutError as error:
        print(f"after {time.perf_counter() - started:.3f} s: RequestTimeoutError: {error}")
    print("still waiting in the queue:", host.stats().queue_depth)
    model.gate.set()
    print("busy request:", outcome(busy))
print("the model ran:", model.calls, "(42 is not there)")
summary.append({"what goes wrong": "a deadline passes",
                "what its caller gets": "RequestTimeoutError at once",
                "what the others get": "their results; the request is never run if not started"})

# %%
# Cancellation
# ------------
# An asyncio task that is cancelled while its request waits removes the
# request: it is never run. A task cancelled while its batch runs just stops
# waiting; the batch finishes and its other callers get their results. (From
# threads, ``host.submit(...)`` returns a future whose ``cancel()`` does the
# same, and returns ``False`` once the batch has started.)


async def cancellation() -> None:
    model = Echo()
    async with ModelHost(model_obj=model) as host:
        busy = occupy(host, model)
        waiting = asyncio.create_task(host.predict_async(x(7)))
        kept = asyncio.create_task(host.predict_async(x(8)))
        await asyncio.sleep(0)  # let both tasks run up to their await: both are queued
        print("queue depth:", host.stats().queue_depth)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        print(f"cancelled task: cancelled={waiting.cancelled()}, "
              f"queue depth now {host.stats().queue_depth}")
        model.gate.set()
        print("other task:", (await kept).tolist(), "| busy request:", outcome(busy))
    print("the model ran:", model.calls, "(7 is not there)")


asyncio.run(cancellation())
summary.append({"what goes wrong": "the caller gives up (task or future cancelled)",
                "what its caller gets": "CancelledError", "what the others get":
                "their results; the request is removed if not started"})

# %%
# Overload
# --------
# ``max_queue_size`` bounds the queue. When it is full, ``predict`` raises
# :class:`~batch_inference.QueueFullError` at once (a server answers "busy,
# try again" instead of piling up work it cannot do in time). A caller that
# prefers to wait passes ``wait_for_queue=True``: it waits for room, up to its
# timeout.

model = Echo()
with ModelHost(model_obj=model, max_queue_size=2) as host:
    busy = occupy(host, model)
    queued = [host.submit(x(v)) for v in (1, 2)]
    try:
        host.predict(x(3))
    except QueueFullError as error:
        print("third request: QueueFullError:", error)
    try:
        host.predict(x(4), wait_for_queue=True, timeout=0.05)
    except QueueFullError as error:
        print("fourth request, waited 0.05 s: QueueFullError:", error)
    model.gate.set()
    print("queued requests:", [outcome(f) for f in queued])
summary.append({"what goes wrong": "the queue is full (max_queue_size)",
                "what its caller gets": "QueueFullError at once (or waits, wait_for_queue=True)",
                "what the others get": "their results"})

# %%
# Shutdown
# --------
# ``stop()`` drains: every request accepted before it is answered. ``stop(
# cancel_pending=True)`` answers the waiting ones with
# :class:`~batch_inference.HostStoppedError` at once instead (the running
# batch finishes). Either way, no caller is left waiting, and ``predict``
# after ``stop()`` raises :class:`~batch_inference.HostNotRunningError`.

for cancel_pending in (False, True):
    model = Echo()
    host = ModelHost(model_obj=model).start()
    busy = occupy(host, model)
    futures = [host.submit(x(v)) for v in (1, 2, 3)]
    stopper = threading.Thread(target=host.stop, kwargs={"cancel_pending": cancel_pending})
    stopper.start()
    if cancel_pending:
        print("answered while the model is still busy:", outcome(futures[0]))
    model.gate.set()
    stopper.join()
    print(f"stop(cancel_pending={cancel_pending}):", [outcome(f) for f in futures])
    try:
        host.predict(x(4))
    except HostNotRunningError as error:
        print("  predict after stop: HostNotRunningError:", error)
summary.append({"what goes wrong": "stop() while callers wait",
                "what its caller gets": "its result (drain) or HostStoppedError "
                "(cancel_pending=True)", "what the others get": "the same"})

# %%
# A broken model, and a broken contract
# -------------------------------------
# If ``predict_batch`` raises something that is not an ``Exception`` (here a
# ``KeyboardInterrupt``), the worker cannot go on: every pending caller gets
# :class:`~batch_inference.HostBrokenError` (with the original as its
# ``__cause__``), ``host.broken`` becomes true and later calls fail at once.
# Nothing hangs. A ``predict_batch`` that returns the wrong number of rows
# gives its callers :class:`~batch_inference.OutputMismatchError`, stating
# what was expected and what came back.


class Interrupted(Echo):
    def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
        out = super().predict_batch(x)
        if (x == 13).any():
            raise KeyboardInterrupt("the model was interrupted")
        return out


model = Interrupted()
host = ModelHost(model_obj=model, max_batch_size=2).start()
busy = occupy(host, model)
futures = [host.submit(x(v)) for v in (13, 1, 2)]
model.gate.set()
for future in futures:
    print(outcome(future), "| cause:", repr(future.exception().__cause__))
print("broken:", host.broken)
try:
    host.predict(x(5))
except HostBrokenError as error:
    print("later predict: HostBrokenError:", error)
host.stop()


class DropsARow:
    def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
        return x[:-1]


with ModelHost(model_obj=DropsARow()) as host:
    try:
        host.predict(x(1))
    except OutputMismatchError as error:
        print("OutputMismatchError:", error)
summary.append({"what goes wrong": "the model raises KeyboardInterrupt/SystemExit",
                "what its caller gets": "HostBrokenError", "what the others get":
                "HostBrokenError; host.broken is True; later calls fail at once"})
summary.append({"what goes wrong": "predict_batch returns the wrong number of rows",
                "what its caller gets": "OutputMismatchError (expected vs got)",
                "what the others get": "the same (their batch)"})

# %%
# In short
# --------

pd.DataFrame(summary)

# %%
# Overload, measured: what a bounded queue does to latency
# --------------------------------------------------------
# A burst of asyncio callers arrives at once at a model that serves 16
# requests per 5 ms call, far fewer than the burst. Each caller allows itself
# 50 ms. Three set-ups:
#
# * an **unbounded** queue: every request is accepted, the late ones time out
#   after waiting their whole 50 ms;
# * ``max_queue_size=64``: the excess is refused at once, the accepted ones
#   are served quickly;
# * ``max_queue_size=64`` with ``wait_for_queue=True``: the excess waits for
#   room, up to its 50 ms.
#
# Every request ends one way or another (result, timeout, queue full): the
# counts add up to the burst. In one burst the bounded queue serves fewer
# requests (the refused callers do not come back here; a real client would
# retry, or go to another replica), but no caller waits in vain: those that
# cannot be served in time hear so at once instead of after their 50 ms.

BURST = 400 if MODE == "quick" else 2000
CALL_S = 0.005
TIMEOUT_S = 0.05


class Steady:
    def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(CALL_S)  # the model's work
        return x


async def burst(max_queue_size: int | None, wait: bool) -> list[tuple[str, float]]:
    async with ModelHost(model_obj=Steady(), max_batch_size=16,
                         max_queue_size=max_queue_size) as host:

        async def one(i: int) -> tuple[str, float]:
            started = time.perf_counter()
            try:
                await host.predict_async(x(i), timeout=TIMEOUT_S, wait_for_queue=wait)
                kind = "result"
            except RequestTimeoutError:
                kind = "timed out"
            except QueueFullError:
                kind = "queue full"
            return kind, time.perf_counter() - started

        return await asyncio.gather(*(one(i) for i in range(BURST)))


setups = {
    "unbounded queue": (None, False),
    "max_queue_size=64": (64, False),
    "max_queue_size=64, wait_for_queue": (64, True),
}
asyncio.run(burst(64, False))  # warm-up
runs = {name: asyncio.run(burst(*args))
        for name, args in progress(list(setups.items()), "bursts", label=lambda s: s[0])}

rows = []
for name, run in runs.items():
    kinds = [k for k, _ in run]
    served = np.array([t for k, t in run if k == "result"]) * 1e3
    refused = np.array([t for k, t in run if k != "result"]) * 1e3
    rows.append({
        "set-up": name,
        "requests": len(run),
        "results": kinds.count("result"),
        "timed out": kinds.count("timed out"),
        "queue full": kinds.count("queue full"),
        "served p50 (ms)": round(float(np.percentile(served, 50)), 1) if served.size else None,
        "served max (ms)": round(float(served.max()), 1) if served.size else None,
        "refused: median wait (ms)": round(float(np.median(refused)), 1) if refused.size else None,
    })
    assert len(run) == BURST  # every caller got an answer
pd.DataFrame(rows)

# %%
# Each dot is one request, in arrival order; its height is how long its caller
# waited for an answer. Without a bound, the callers that cannot be served in
# time learn it only when their 50 ms are up (red); with a bound, they learn
# it at once (orange, at the bottom) and can go elsewhere. With
# ``wait_for_queue=True`` the excess waits for room, and some of it is served.

colors = {"result": "#4c72b0", "timed out": "#c44e52", "queue full": "#dd8452"}
fig, axes = plt.subplots(1, len(runs), figsize=(11, 3.4), sharey=True)
for ax, (name, run) in zip(axes, runs.items()):
    for kind, color in colors.items():
        points = [(i, t * 1e3) for i, (k, t) in enumerate(run) if k == kind]
        if points:
            ax.scatter(*zip(*points), s=4, color=color, label=kind)
    ax.set_title(name, fontsize=10)
    ax.set_xlabel("request (arrival order)")
axes[0].set_ylabel("time to answer (ms)")
fig.legend(handles=[plt.Line2D([], [], marker="o", linestyle="", color=color, label=kind)
                    for kind, color in colors.items()], loc="lower center", ncols=3)
fig.suptitle(f"A burst of {BURST} callers, {TIMEOUT_S * 1e3:.0f} ms timeout each")
fig.tight_layout(rect=(0, 0.08, 1, 1))
plt.show()
