"""
Quick start: wrap a model, call it from many threads, watch the batches form
============================================================================

What you will learn: how to serve a model's ``predict_batch`` with
``@batching``, call it from many threads, and see what the host does: it
starts a batch as soon as the model is idle, and the busier the model, the
larger the batches. We record every ``predict_batch`` call (time and size)
while 1, 4, 16 and then 64 client threads send requests.

Hardware: any; the model is a small linear layer plus a fixed 4 ms per call
that stands in for the per-call cost of a large model on an accelerator, so
the page shows the same picture on a laptop and on a GPU server. It takes a
few seconds in both modes.
"""

# %%
# A model with ``predict_batch``
# ------------------------------
# ``predict_batch`` receives the rows of every request of a batch
# concatenated along dimension 0 (the default
# :class:`~batch_inference.batcher.concat_batcher.ConcatBatcher`), and
# returns one output row per input row. Here it also records when it ran and
# how many rows it got.

import time

import matplotlib.pyplot as plt
import pandas as pd
import torch

from batch_inference import batching
from batch_inference.benchmark import (
    closed_loop,
    environment,
    format_environment,
    progress,
    run_mode,
)

MODE = run_mode()
print(format_environment(environment(MODE, weights="a random torch.nn.Linear(16, 4)")))

PER_CALL_S = 0.004  # stands in for a large model's fixed cost per call


@batching(max_batch_size=32)
class TinyModel:
    def __init__(self) -> None:
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(16, 4)
        self.calls: list[tuple[float, int]] = []  # (time.monotonic(), batch size)

    def predict_batch(self, features: torch.Tensor) -> torch.Tensor:
        self.calls.append((time.monotonic(), int(features.shape[0])))
        time.sleep(PER_CALL_S)
        with torch.inference_mode():
            return self.layer(features)


# %%
# Call it from many threads
# -------------------------
# ``TinyModel.host()`` returns a :class:`~batch_inference.ModelHost` that
# builds ``TinyModel()`` when it starts. Each client thread sends one request
# (one row of 16 features) at a time and waits for its answer; the load grows
# from 1 to 64 concurrent clients.

generator = torch.Generator().manual_seed(0)
phases = []
with TinyModel.host() as host:
    model = host.models[0]
    started_s = time.monotonic()
    for clients in progress((1, 4, 16, 64), "load phases", label=lambda n: f"{n} clients"):
        queries = [(torch.randn(1, 16, generator=generator),) for _ in range(25 * clients)]
        first_call = len(model.calls)
        load = closed_loop(host.predict, queries, clients, keep_outputs=True)
        sizes = [size for _, size in model.calls[first_call:]]
        phases.append({
            "clients": clients,
            "requests": load.queries,
            "batches": len(sizes),
            "avg batch size": round(sum(sizes) / len(sizes), 2),
            "requests/s": round(load.qps),
            "p50 latency (ms)": round(load.p50_s * 1e3, 1),
        })
        # Every caller got exactly the model's answer for its own row.
        for (x,), y in zip(queries, load.outputs):
            assert torch.allclose(y, model.layer(x).detach(), atol=1e-6)
    stats = host.stats()

print(f"{stats.requests} requests in {stats.batches} predict_batch calls; "
      f"batch sizes seen: {sorted(stats.batch_sizes)}")

# %%
# What happened
# -------------
# With one client every request runs alone, at once: there is nothing to
# wait for. With more clients, requests arrive while the model is busy and
# are batched together at the next call: the average batch grows with the
# load, and so does the throughput, while each request still costs about one
# model call of latency.

pd.DataFrame(phases)

# %%
# Batch sizes over time
# ---------------------
# Each dot is one ``predict_batch`` call.

times = [t - started_s for t, _ in model.calls]
sizes = [size for _, size in model.calls]
fig, ax = plt.subplots(figsize=(8, 3.5))
ax.scatter(times, sizes, s=10, color="#4c72b0")
edges = [0]
for phase in phases:
    edges.append(edges[-1] + phase["batches"])
for phase, start, stop in zip(phases, edges, edges[1:]):
    middle = (times[start] + times[stop - 1]) / 2
    ax.annotate(f"{phase['clients']} client{'s' if phase['clients'] > 1 else ''}",
                (middle, 34), ha="center", fontsize=9)
    ax.axvline(times[start], color="#cccccc", linewidth=1, zorder=0)
ax.set_ylim(0, 38)
ax.set_xlabel("time since the host started (s)")
ax.set_ylabel("requests in the batch")
ax.set_title("Batches form by themselves as the load grows (max_batch_size=32)")
fig.tight_layout()
plt.show()
