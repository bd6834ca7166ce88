"""
Asyncio: serving many concurrent requests from an event loop
============================================================

What you will learn: how an asyncio web handler calls a batched model with
``await host.predict_async(...)``, and why it should: we send 500 concurrent
requests through a handler, once calling the model directly (which blocks
the event loop) and once through the host, and measure throughput, latency,
the batch sizes, and how long the event loop was unable to run anything else
(its lag, measured by a heartbeat task).

Hardware: any; the model is a small network plus a fixed 4 ms of work per
call that stands in for the per-call cost of a large model on an
accelerator. It takes a few seconds in both modes.
"""

# %%
# The model and a handler
# -----------------------
# ``handle`` is what a web framework (aiohttp, FastAPI, ...) would call for
# each HTTP request: decode the payload, get the model's answer, encode the
# response. It must not block: every other request of the server waits while
# it does.

import asyncio
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from batch_inference import ModelHost, RequestTimeoutError
from batch_inference.benchmark import environment, format_environment, progress, run_mode

MODE = run_mode()
print(format_environment(environment(MODE, weights="a random 2-layer MLP (32 -> 64 -> 8)")))

WORK_PER_CALL_S = 0.004  # stands in for a large model's fixed cost per call
REQUESTS = 500


class Classifier:
    def __init__(self) -> None:
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)
        )
        self.batch_sizes: list[int] = []

    def predict_batch(self, features: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(int(features.shape[0]))
        time.sleep(WORK_PER_CALL_S)  # the model is busy (not the event loop's business)
        with torch.inference_mode():
            return self.net(features).softmax(dim=-1)


model = Classifier()
host = ModelHost(model_obj=model, max_batch_size=64)


async def handle(payload: dict, batched: bool) -> dict:
    """One web request: {"features": [...32 floats]} -> {"label": int, "p": float}."""
    x = torch.tensor(payload["features"], dtype=torch.float32)[None]
    if batched:
        try:
            probs = await host.predict_async(x, timeout=5.0)
        except RequestTimeoutError:
            return {"error": "busy, try again"}  # e.g. HTTP 503
    else:
        probs = model.predict_batch(x)  # blocks the event loop while the model runs
    label = int(probs.argmax())
    return {"label": label, "p": round(float(probs[0, label]), 4)}


# %%
# A server's worth of concurrent requests
# ---------------------------------------
# 500 requests arrive at once (one task each, as a server would create); a
# request's latency is from that moment to its response. A heartbeat task
# wakes every millisecond and records how late it woke up.

rng = np.random.default_rng(0)
payloads = [{"features": rng.standard_normal(32).round(3).tolist()} for _ in range(REQUESTS)]


async def serve_all(batched: bool) -> dict:
    lags: list[float] = []
    done = asyncio.Event()

    async def heartbeat() -> None:
        while not done.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - before - 0.001)

    async def timed(payload: dict) -> tuple[dict, float]:
        response = await handle(payload, batched)
        return response, time.perf_counter() - arrived  # as the client sees it

    beat = asyncio.create_task(heartbeat())
    await asyncio.sleep(0.005)  # let the heartbeat start
    started = arrived = time.perf_counter()  # every request arrives now
    answers = await asyncio.gather(*(timed(p) for p in payloads))
    wall_s = time.perf_counter() - started
    done.set()
    await beat
    return {"responses": [a for a, _ in answers], "latencies_s": [t for _, t in answers],
            "wall_s": wall_s, "max_lag_s": max(lags)}


async def measured(batched: bool) -> dict:
    if not batched:
        return await serve_all(batched=False)
    async with host:  # start() on entry, stop() (drain) on exit
        await serve_all(batched=True)  # warm-up
        calls_before = len(model.batch_sizes)
        run = await serve_all(batched=True)
    run["batch_sizes"] = model.batch_sizes[calls_before:]
    return run


async def main() -> dict:
    handlers = [("direct call in the handler", False), ("await host.predict_async", True)]
    return {name: await measured(batched)
            for name, batched in progress(handlers, "handler runs", label=lambda h: h[0])}


runs = asyncio.run(main())

# %%
# Same answers either way: batching does not change what a request gets.

direct = runs["direct call in the handler"]["responses"]
batched = runs["await host.predict_async"]["responses"]
assert [r["label"] for r in direct] == [r["label"] for r in batched]
assert all(abs(a["p"] - b["p"]) < 1e-3 for a, b in zip(direct, batched))
print(f"{len(batched)} responses, identical labels; e.g. {batched[0]}")

# %%
# Results
# -------
# Calling the model in the handler runs the requests one after the other and
# freezes the event loop for each call (its lag is one model call or more):
# nothing else on the server runs meanwhile. Awaiting ``predict_async`` keeps
# the loop free while the host batches the waiting requests.

rows = []
for name, run in runs.items():
    latencies = np.array(run["latencies_s"])
    sizes = run.get("batch_sizes", [1] * REQUESTS)
    rows.append({
        "handler": name,
        "requests": REQUESTS,
        "wall time (s)": round(run["wall_s"], 3),
        "requests/s": round(REQUESTS / run["wall_s"]),
        "p50 latency (ms)": round(float(np.percentile(latencies, 50)) * 1e3, 1),
        "p99 latency (ms)": round(float(np.percentile(latencies, 99)) * 1e3, 1),
        "avg batch size": round(float(np.mean(sizes)), 1),
        "max event-loop lag (ms)": round(run["max_lag_s"] * 1e3, 1),
    })
pd.DataFrame(rows)

# %%
# Latency of the 500 requests
# ---------------------------

fig, ax = plt.subplots(figsize=(8, 3.5))
for (name, run), color in zip(runs.items(), ["#c44e52", "#4c72b0"]):
    latencies_ms = np.sort(np.array(run["latencies_s"]) * 1e3)
    ax.plot(latencies_ms, np.arange(1, REQUESTS + 1) / REQUESTS, label=name, color=color)
ax.set_xscale("log")
ax.set_xlabel("latency (ms, log scale)")
ax.set_ylabel("share of requests answered")
ax.set_title(f"{REQUESTS} concurrent requests through an asyncio handler")
ax.legend(loc="lower right")
fig.tight_layout()
plt.show()
