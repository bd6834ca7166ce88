"""
Feeding a fast accelerator: threads, asyncio tasks, and client processes
========================================================================

What you will learn: how much of an accelerator's capacity one Python process
can use when it feeds it through the host from threads or from asyncio tasks,
and how several client processes sharing one model through
:class:`~batch_inference.RemoteModelHost` compare.

The model is a **simulated accelerator**: ``predict_batch(x)`` sleeps
``0.5 ms + 20 us`` per row and returns ``x``. ``time.sleep`` releases Python's
global interpreter lock (GIL) while it waits, as a CUDA model does while it
waits for the device, so everything else (forming batches, waking callers)
overlaps the "device" time. With :class:`~batch_inference.batcher.ConcatBatcher`
and ``max_batch_size=64``, the accelerator kept busy with full batches serves
``64 / (0.5 ms + 64 x 20 us)``, about 36,000 requests per second: its
**capacity**. Each row below is shown as a fraction of it:

* **threads**: 256 threads of this process call ``host.predict`` back to back;
* **asyncio tasks**: 1024 tasks on one event loop await ``host.predict_async``;
* **client processes**: 4 processes x 64 threads call
  ``RemoteModelHost.predict``; this process serves the model. Each client
  process batches its own callers' requests into messages, so the serving
  process pays per message what it would otherwise pay per request, and each
  client has its own GIL;
* **batch-inference 1.0** (256 threads, the same harness, in a subprocess): only
  when the environment variable ``BATCH_INFERENCE_V1_PATH`` names an unpacked
  1.0 (``tox -e docs`` fetches one with ``tools/fetch_v1.py``; by hand:
  ``pip download batch-inference==1.0 --no-deps`` and unzip the wheel; 1.0
  needs ``filelock``, ``grpcio``, ``msgpack``, ``msgpack-numpy`` and
  ``protobuf``); otherwise the row is skipped, and the page says why.

A last section takes the model away: a model that does nothing, called 20,000
times from a ``ThreadPoolExecutor(64)``, measures the host's own cost per
request, this package and 1.0 each in a fresh process of its own.

It also measures what a **lone caller** in another process pays for the trip:
one client process calls a local host of its own and the ``RemoteModelHost``
alternately, with a model that does nothing; the difference of the medians is
what the remote mode adds.

Hardware: any; no GPU is used. The loads are closed loops bounded in time and
count: each runs a warm-up, then a few rounds, and reports the median round.
Quick mode (CPU, the docs build) keeps the page under about 40 seconds; the
figures depend on the number of CPU cores (printed below): client processes
need cores of their own to help.
"""

# %%
# Set-up
# ------

import sys
from pathlib import Path

sys.path.insert(0, str(Path(sys.argv[0]).resolve().parents[1]))  # the repository root, for benchmarks/

import matplotlib.pyplot as plt
import pandas as pd

from batch_inference.benchmark import environment, format_environment, run_mode, save_results
from benchmarks.accelerator import (
    LoadSize,
    capacity_requests_per_s,
    executor_rates,
    remote_lone_caller,
    remote_processes_row,
    tasks_row,
    threads_row,
    v1_path,
    v1_threads_row,
)

MODE = run_mode()
SIZE = LoadSize(rounds=3, round_s=1.0, warmup_s=0.5) if MODE == "quick" else LoadSize(5, 2.0, 1.0)
env = environment(MODE, weights="none (a simulated accelerator: sleeps 0.5 ms + 20 us/row)")
print(format_environment(env))
print(f"load: {SIZE.warmup_s} s warm-up, then {SIZE.rounds} rounds of {SIZE.round_s} s")
CAPACITY = capacity_requests_per_s()
print(f"accelerator capacity: {CAPACITY:,.0f} requests/s (max_batch_size=64)")

# %%
# The four ways, side by side in one run
# --------------------------------------

rows = [threads_row(256, SIZE), tasks_row(1024, SIZE), remote_processes_row(4, 64, SIZE)]
v1 = v1_threads_row(256, SIZE)
if v1 is None:
    print(f"batch-inference 1.0: skipped ({v1_path()[1]})")
else:
    rows.append(v1)
for row in rows:
    print(f"{row.label:48s} {row.requests_per_s:10,.0f} requests/s "
          f"({row.fraction_of_capacity:.0%} of capacity); rounds: "
          + ", ".join(f"{r:,.0f}" for r in row.rounds))

# %%
# A lone caller's round trip
# --------------------------

lone = remote_lone_caller(calls=1_000 if MODE == "quick" else 5_000)
print(f"local host {lone['local_s'] * 1e3:.3f} ms, RemoteModelHost {lone['remote_s'] * 1e3:.3f} ms "
      f"(medians): the remote mode adds {lone['added_s'] * 1e3:.3f} ms")

# %%
# Summary
# -------
# ``vs threads`` divides each row by the first one (256 threads in one process).

threads_rps = rows[0].requests_per_s
pd.DataFrame([
    {"Callers": row.label, "Requests/s": f"{row.requests_per_s:,.0f}",
     "% of capacity": f"{row.fraction_of_capacity:.0%}",
     "vs threads": f"{row.requests_per_s / threads_rps:.2f}x"}
    for row in rows
] + [{"Callers": "a lone caller in another process: added latency (median)",
      "Requests/s": "", "% of capacity": "", "vs threads": f"{lone['added_s'] * 1e3:.3f} ms"}])

# %%
# Requests per second against the accelerator's capacity
# ------------------------------------------------------
# How to read it: the dashed line is what the accelerator could do. A row
# below it is limited by the Python side (the GIL of the feeding process:
# waking callers, forming batches), not by the device.

fig, ax = plt.subplots(figsize=(8, 3.6))
labels = [row.label.replace(", ", "\n") for row in rows]
ax.barh(range(len(rows)), [row.requests_per_s for row in rows],
        color=["#4c72b0", "#55a868", "#c44e52", "#8172b2"][: len(rows)])
ax.axvline(CAPACITY, color="black", linestyle="--", label=f"capacity {CAPACITY:,.0f}/s")
for i, row in enumerate(rows):
    ax.text(row.requests_per_s, i, f" {row.fraction_of_capacity:.0%}", va="center")
ax.set_yticks(range(len(rows)), labels, fontsize=8)
ax.invert_yaxis()
ax.set_xlabel("requests / s")
ax.set_xlim(0, CAPACITY * 1.15)
ax.legend(fontsize=8, loc="lower right")
ax.set_title("simulated accelerator (0.5 ms + 20 us/row, max batch 64)")
fig.tight_layout()
plt.show()

# %%
# The host's own cost: a model that does nothing
# ----------------------------------------------
# No device time hides the Python side here: every request is the host's
# hand-offs alone. 20,000 calls of ``host.predict`` mapped over a
# ``ThreadPoolExecutor(64)``, median of three rounds after a warm-up, each
# library in a fresh process of its own, one after the other.

executor = executor_rates(workers=64, calls=20_000, rounds=3)
ours = executor["batch_inference (this)"]["requests_per_s"]


def _rate_cell(rate: dict) -> str:
    if rate["requests_per_s"] is None:
        return f"did not finish: {rate['hung']} calls never answered"
    return f"{rate['requests_per_s']:,.0f}"


executor_table = pd.DataFrame([
    {"Library": name, "Requests/s": _rate_cell(rate),
     "rounds": ", ".join(f"{r:,.0f}" for r in rate["rounds"]),
     "vs this": "" if rate["requests_per_s"] is None or ours is None
     else f"{rate['requests_per_s'] / ours:.2f}x"}
    for name, rate in executor.items()
])
if len(executor) == 1:
    print(f"batch-inference 1.0: skipped ({v1_path()[1]})")
print(executor_table.to_string(index=False))
executor_table

# %%

save_results("accelerator", {
    "environment": {k: str(v) for k, v in env.items()},
    "capacity_requests_per_s": CAPACITY,
    "rows": [{"label": row.label, "requests_per_s": row.requests_per_s,
              "fraction_of_capacity": row.fraction_of_capacity, "rounds": list(row.rounds)}
             for row in rows],
    "lone_caller": lone,
    "executor_no_op": executor,
})
