"""
Overhead: what the host itself costs, with a model that does nothing
====================================================================

A batching host sits between callers and the model, so every request pays for
the queue, the scheduling, the batching and the hand-back. To see that cost
alone, this page serves a model whose ``predict_batch(x)`` returns ``x``
(requests are ``(1, 4)`` NumPy arrays, batched by
:class:`~batch_inference.batcher.ConcatBatcher`) and measures, **on the machine
that builds these docs** (printed below):

* **requests per second from threads**: client threads each call
  ``host.predict`` one request at a time, as fast as they can;
* **requests per second from asyncio tasks**: tasks on one event loop each
  await ``host.predict_async`` one request at a time;
* **the latency a lone caller adds**: one thread calls ``predict_batch``
  directly, and ``host.predict``, alternately; the difference of the medians.

The code lives in :mod:`benchmarks.overhead`. The sizes do not
depend on the mode: they take a few seconds on any machine.

How to read the thread figures: every thread caller sleeps until its result
is ready, so each request costs at least one wake-up of a sleeping thread by
another. On a virtual machine whose CPUs are otherwise idle, a wake-up can cost
tens of microseconds (the CPU has to be woken first), and that, not the host's
own work, then bounds the thread figures; asyncio tasks need no such wake-up
per request. So next to each thread figure this page measures a **floor**:
the same closed loop with no host at all, where each call only hands a lock to
a server thread and sleeps until it is released
(:func:`~benchmarks.overhead.handoff_floor_requests_per_s`). No
thread-based host can beat it on this machine.
"""

# %%
# Set-up
# ------

import sys
from pathlib import Path

sys.path.insert(0, str(Path(sys.argv[0]).resolve().parents[1]))  # the repository root, for benchmarks/

import matplotlib.pyplot as plt
import pandas as pd

from batch_inference.benchmark import (
    environment,
    format_environment,
    progress,
    run_mode,
    save_results,
)
from benchmarks.overhead import (
    async_requests_per_s,
    handoff_floor_requests_per_s,
    lone_caller_latency,
    thread_requests_per_s,
)

MODE = run_mode()
env = environment(MODE, weights="none (a model that returns its input)")
print(format_environment(env))
THREADS = [1, 4, 16, 64]
TASKS = [1, 10, 100, 1000]

# %%
# Threads and asyncio tasks
# -------------------------
# The more callers, the more requests wait together, the larger the batches,
# and the less each request costs. ``max_batch_size`` is 64 for threads and
# 256 for tasks. Run on its own from a terminal, the page shows a progress
# bar on stderr, one step per measured run (the docs build shows none).

thread_rps, floor_rps = {}, {}
for n in progress(THREADS, "thread runs", label=lambda n: f"{n} threads"):
    # side by side: the host, then the floor, at each thread count
    thread_rps[n] = thread_requests_per_s(n, requests=min(20_000, 2_000 * n))
    floor_rps[n] = handoff_floor_requests_per_s(n, requests=min(20_000, 2_000 * n))
async_rps = {n: async_requests_per_s(n, requests=min(60_000, 2_000 * n))
             for n in progress(TASKS, "asyncio runs", label=lambda n: f"{n} tasks")}
lone = lone_caller_latency(calls=2_000)
lone_ms = lone.added_s * 1e3

for n, rps in thread_rps.items():
    print(f"{n:5d} threads: {rps:10,.0f} requests/s (floor: {floor_rps[n]:,.0f}, "
          f"{rps / floor_rps[n]:.0%} of it)")
for n, rps in async_rps.items():
    print(f"{n:5d} tasks  : {rps:10,.0f} requests/s")
print(f"a lone caller (medians): {lone.hosted_s * 1e6:.1f} µs through the host, "
      f"{lone.direct_s * 1e6:.1f} µs calling predict_batch directly: "
      f"the host adds {lone.added_s * 1e6:.1f} µs")

# %%
# Summary
# -------

pd.DataFrame([
    {"Measure": f"requests/s, {max(THREADS)} threads", "Value": f"{thread_rps[max(THREADS)]:,.0f}"},
    {"Measure": f"requests/s, {max(THREADS)} threads, hand-off floor (no host)",
     "Value": f"{floor_rps[max(THREADS)]:,.0f}"},
    {"Measure": "host / floor, threads",
     "Value": f"{thread_rps[max(THREADS)] / floor_rps[max(THREADS)]:.0%}"},
    {"Measure": f"requests/s, {max(TASKS)} asyncio tasks", "Value": f"{async_rps[max(TASKS)]:,.0f}"},
    {"Measure": "added latency, lone caller (medians)", "Value": f"{lone.added_s * 1e6:.1f} µs"},
])

# %%
# Requests per second by number of callers
# ----------------------------------------
# How to read the gap between the host and the floor: the floor does no work
# per batch, the host does (it selects the batch, concatenates the rows, calls
# the model, splits the outputs and records its stats). With few threads the
# batches are small and that work is shared by few requests; with many threads
# it is spread thin, and what is left is the per-request cost under Python's
# global interpreter lock.

fig, (ax_t, ax_a) = plt.subplots(1, 2, figsize=(10, 3.6))
ax_t.bar([i - 0.2 for i in range(len(THREADS))], list(thread_rps.values()), 0.4,
         color="#4c72b0", label="host.predict")
ax_t.bar([i + 0.2 for i in range(len(THREADS))], list(floor_rps.values()), 0.4,
         color="white", edgecolor="#4c72b0", hatch="//", label="floor: hand-off only")
ax_t.set_xticks(range(len(THREADS)), [str(n) for n in THREADS])
ax_t.legend(fontsize=8)
ax_t.set_xlabel("client threads")
ax_t.set_ylabel("requests / s")
ax_t.set_title("threads: host.predict")
ax_a.bar(range(len(TASKS)), list(async_rps.values()), color="#55a868")
ax_a.set_xticks(range(len(TASKS)), [str(n) for n in TASKS])
ax_a.set_xlabel("asyncio tasks")
ax_a.set_title("asyncio: await host.predict_async")
fig.suptitle("a model that does nothing: the host's own cost")
fig.tight_layout()
plt.show()

# %%
# The figures are saved for the docs build (when ``$BATCH_INFERENCE_RESULTS_DIR``
# is set): the *How it works* page quotes the lone caller's cost from them.

save_results("overhead", {
    "environment": {k: str(v) for k, v in env.items()},
    "thread_requests_per_s": {str(k): v for k, v in thread_rps.items()},
    "thread_floor_requests_per_s": {str(k): v for k, v in floor_rps.items()},
    "async_requests_per_s": {str(k): v for k, v in async_rps.items()},
    "lone_caller_added_ms": lone_ms,
    "lone_caller_direct_ms": lone.direct_s * 1e3,
    "lone_caller_hosted_ms": lone.hosted_s * 1e3,
})
