"""
Serving over HTTP: a FastAPI app with and without batching
==========================================================

Most users call a model through a web server. This page serves the BERT
tutorial's model (:doc:`plot_bert_embedding`) as an HTTP endpoint and
**measures it on the machine that builds these docs** (printed below). You
will see how to put a :class:`~batch_inference.ModelHost` behind FastAPI (the
app is :mod:`benchmarks.http_app`; the recipe is on the
:doc:`/serving` page), and what batching is worth once HTTP is in the path.

The app answers ``POST /embed`` with ``{"input_ids": [...]}`` (one tokenized
query) by the query's sentence embedding: the mean over its tokens of the
model's last hidden state. The model is loaded, and the host started, in the
app's ``lifespan``; nothing is started at import. Each server runs under
uvicorn in a process of its own, started by this page, on a Unix socket in a
private temporary directory (nothing listens on the network), and stopped
when the page is done with it, however it ends.

Compared on the same run, each with the same clients and queries:

* **one process, no batching**: the endpoint calls ``predict_batch`` on its
  own query in a thread pool of two threads (as the BERT tutorial's
  baseline: at most two model calls at once, and the event loop never
  blocks). One thread would leave the model idle while a request is parsed;
  many threads on a CPU only make torch's threads contend.
* **one process, ModelHost**: the endpoint awaits
  ``host.predict_async(input_ids, attention_mask)``; the host groups the
  requests that wait together by length bucket
  (:class:`~batch_inference.batcher.BucketSeqBatcher`, batch-inference 1.0's buckets
  ``[16, 32, 64]``, ``max_batch_size=32``), pads each group and runs it as
  one batch.
* **several processes, RemoteModelHost**: uvicorn runs several worker
  processes (2 in quick mode, 4 in full mode), each parsing HTTP and JSON
  on a core of its own; each creates a
  :class:`~batch_inference.remote.RemoteModelHost` on the same port in its
  lifespan (its asyncio twin,
  :class:`~batch_inference.remote.AsyncRemoteModelHost`). One of them loads
  the model and serves it (its own requests go to it directly); the others
  send their requests to it, so all requests share one model and its batches
  (same batcher and batch size as above). This is how a server that needs
  more than one Python process for its HTTP work still keeps one model.

The load comes from this page's own asyncio HTTP client
(:func:`~benchmarks.http_load.http_load`, on ``httpx``):
closed-loop clients, each sending its next request when the last one is
answered, until a request count **or** a time limit is reached, whichever
comes first. The client shares the machine with the servers, so on a small
CPU the figures include its own cost.

Sizes: **full** (on a CUDA GPU) serves ``bert-base-uncased`` (pretrained where
the weights are available offline, otherwise randomly initialised: same
compute) to 128 clients; **quick** (on a CPU) serves the real
``all-MiniLM-L6-v2`` weights to 32 clients. ``BATCH_INFERENCE_MODE`` overrides.

How to read a small CPU's figures: the servers, this page's HTTP client and
torch's own threads share the same few cores, so extra processes also compete
with the model for them; the multi-process variant is built for machines
where the model runs elsewhere (a GPU) and the Python processes would
otherwise be the limit.
"""

# %%
# Set-up
# ------
# The app, the load generator and the server process live in
# the repository's ``benchmarks/`` (tested): this script only
# chooses the sizes, runs them side by side and shows the results.

import sys
from pathlib import Path

sys.path.insert(0, str(Path(sys.argv[0]).resolve().parents[1]))  # the repository root, for benchmarks/

import asyncio
import contextlib
import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.patches import Patch

from batch_inference.benchmark import environment, format_environment, run_mode, save_results
from benchmarks.bert import make_queries, random_lengths
from benchmarks.http_app import ServeSettings
from benchmarks.http_load import HttpLoadResult, http_load
from benchmarks.http_server import UvicornServer

logging.getLogger("httpx").setLevel(logging.WARNING)  # no log line per request in the output
MODE = run_mode()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SIZES = {
    "full": {"model": "bert-base", "clients": 128, "requests": 3000, "max_s": 30.0,
             "warmup": 512, "warmup_s": 10.0, "workers": 4},
    "quick": {"model": "minilm", "clients": 32, "requests": 160, "max_s": 3.0, "warmup": 48,
              "warmup_s": 2.0, "workers": 2},
}[MODE]
ROUNDS = 3  # each variant runs this many times, interleaved; its median run is reported
MAX_BATCH_SIZE = 32
SHORTEST, LONGEST = 4, 100  # query lengths in tokens, as in the BERT tutorial
CHECKED = 32  # the first answers of each variant, compared with the unbatched one's

SERVED = {"model": SIZES["model"], "device": DEVICE}
# On a CPU the model's OpenMP threads share the cores with the HTTP work and this page's
# client: told to sleep at their barriers instead of spinning, a thread that waits for a
# descheduled partner gives its core away. Every server gets the same environment.
SERVER_ENV = {} if DEVICE == "cuda" else {"OMP_WAIT_POLICY": "PASSIVE"}
VARIANTS = {  # label: (the app's settings, uvicorn worker processes)
    "one process, no batching": (ServeSettings(variant="direct", direct_threads=2, **SERVED), 1),
    "one process, ModelHost": (ServeSettings(variant="host", max_batch_size=MAX_BATCH_SIZE,
                                             batcher="bucket", **SERVED), 1),
    f"{SIZES['workers']} processes, RemoteModelHost": (
        ServeSettings(variant="remote", max_batch_size=MAX_BATCH_SIZE, batcher="bucket",
                      **SERVED), SIZES["workers"]),
}

env = environment(MODE, model=SIZES["model"], clients=SIZES["clients"],
                  requests=f"{SIZES['requests']} per run, or {SIZES['max_s']} s at most",
                  rounds=ROUNDS, max_batch_size=MAX_BATCH_SIZE,
                  direct_threads=VARIANTS["one process, no batching"][0].direct_threads,
                  workers=SIZES["workers"], server_env=SERVER_ENV or "inherited")
print(format_environment(env))

# %%
# Start the servers, measure, stop them
# -------------------------------------
# All servers start at once and load their models in parallel; each one is
# stopped when the ``with`` block ends, also if a measurement fails. Each
# server's ``GET /health`` says which weights it loaded and its vocabulary.
#
# The queries are random token ids between ``[CLS]`` and ``[SEP]``, of
# lengths drawn uniformly between 4 and 100 tokens (the model's cost depends
# on the length only); the warm-up uses other queries. Per server, a warm-up,
# then ``ROUNDS`` measured runs interleaved with the other servers' (round 1
# runs every variant, then round 2...), so a slow phase of the machine hits
# every variant alike.


def client_for(server: UvicornServer) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(uds=server.uds)
    limits = httpx.Limits(max_connections=SIZES["clients"])
    return httpx.AsyncClient(transport=transport, base_url="http://embeddings", limits=limits)


def bodies(count: int, vocab_size: int, seed: int) -> list[dict]:
    lengths = random_lengths(count, SHORTEST, LONGEST, seed=seed)
    return [{"input_ids": ids[0].tolist()} for ids, _ in make_queries(lengths, vocab_size, seed)]


async def measure(servers: dict[str, UvicornServer]) -> tuple[dict, dict, dict, list]:
    runs = {label: [] for label in servers}
    answers, health = {}, {}
    async with contextlib.AsyncExitStack() as stack:
        clients = {label: await stack.enter_async_context(client_for(server))
                   for label, server in servers.items()}
        for label, client in clients.items():
            health[label] = (await client.get("/health")).raise_for_status().json()
        vocab_size = min(h["vocab_size"] for h in health.values())
        payloads = bodies(SIZES["requests"], vocab_size, seed=0)
        warmup = bodies(SIZES["warmup"], vocab_size, seed=1)
        for client in clients.values():
            await http_load(client, "/embed", warmup, SIZES["clients"],
                            max_requests=len(warmup), max_duration_s=SIZES["warmup_s"])
        for round_ in range(ROUNDS):
            for label, client in clients.items():
                result = await http_load(client, "/embed", payloads, SIZES["clients"],
                                         max_requests=SIZES["requests"],
                                         max_duration_s=SIZES["max_s"],
                                         keep_outputs=round_ == 0)
                if round_ == 0:
                    answers[label], result.outputs = result.outputs[:CHECKED], []
                runs[label].append(result)
    return runs, answers, health, await scrape_metrics(servers[REMOTE])


REMOTE = f"{SIZES['workers']} processes, RemoteModelHost"
SCRAPES = 6


async def scrape_metrics(server: UvicornServer) -> list[tuple[int, str]]:
    """``GET /metrics`` after the load, each on a new connection: (the answering pid, the text)."""
    scrapes = []
    for _ in range(SCRAPES):
        async with client_for(server) as client:  # one connection: /health and /metrics
            pid = (await client.get("/health")).raise_for_status().json()["pid"]
            scrapes.append((pid, (await client.get("/metrics")).raise_for_status().text))
    return scrapes


servers: dict[str, UvicornServer] = {}
with contextlib.ExitStack() as stack:
    for label, (settings, workers) in VARIANTS.items():
        servers[label] = UvicornServer(settings, workers=workers, start_timeout_s=300,
                                       env=SERVER_ENV)
        stack.callback(servers[label].stop)
        servers[label].start()
    for server in servers.values():
        server.wait_ready()
    runs, answers, health, scrapes = asyncio.run(measure(servers))
print("every server stopped:", not any(server.running for server in servers.values()))
for label, info in health.items():
    print(f"{label}: weights {info['weights']}")

# %%
# Same answers everywhere
# -----------------------
# The unbatched variant runs the model on each query alone, so its answers
# are the reference; batching (padding included) must not change what a
# caller gets. Also: which processes answered.

reference = answers["one process, no batching"]
for label, outputs in answers.items():
    largest = max(float(np.abs(np.subtract(got["embedding"], want["embedding"])).max())
                  for got, want in zip(outputs, reference))
    pids = {got["pid"] for got in outputs}
    print(f"{label}: first {CHECKED} answers vs unbatched: largest difference {largest:.1e}; "
          f"answered by {len(pids)} process(es)")
    assert largest < 1e-3, (label, largest)

# %%
# Results
# -------
# Each variant's median run (by requests per second): throughput, the median
# and 99th-percentile time a client waited for its answer, how the run ended
# (its request count, or its time limit), and the speed-up over the unbatched
# server.


def median_run(results: list[HttpLoadResult]) -> HttpLoadResult:
    return sorted(results, key=lambda r: r.requests_per_s)[len(results) // 2]


medians = {label: median_run(results) for label, results in runs.items()}
base_rps = medians["one process, no batching"].requests_per_s
rows = [{
    "Variant": label,
    "Processes": VARIANTS[label][1],
    "Requests": r.requests,
    "Requests/s": round(r.requests_per_s, 1),
    "p50 latency (ms)": round(r.p50_s * 1e3, 1),
    "p99 latency (ms)": round(r.p99_s * 1e3, 1),
    "Ended by": r.stopped_by,
    "Speed-up": round(r.requests_per_s / base_rps, 2),
} for label, r in medians.items()]
for row in rows[1:]:
    print(f"{row['Variant']}: {row['Speed-up']:.2f}x the requests/s of the unbatched server, "
          f"p50 latency {row['p50 latency (ms)']} ms against "
          f"{rows[0]['p50 latency (ms)']} ms")
pd.DataFrame(rows)

# %%
# Throughput and latency
# ----------------------

labels = [row["Variant"].replace(", ", ",\n") for row in rows]
colours = ["#8c8c8c", "#4c72b0", "#55a868"]
fig, (ax_rps, ax_lat) = plt.subplots(1, 2, figsize=(10, 3.8))
bars = ax_rps.bar(labels, [row["Requests/s"] for row in rows], color=colours)
for bar, row in zip(bars, rows):
    ax_rps.annotate(f"{row['Speed-up']:.2f}x", (bar.get_x() + bar.get_width() / 2,
                                                bar.get_height()), ha="center", va="bottom")
ax_rps.set_ylabel("requests / s (higher is better)")
ax_rps.margins(y=0.15)
x = np.arange(len(rows))
ax_lat.bar(x - 0.2, [row["p50 latency (ms)"] for row in rows], 0.4, color=colours)
ax_lat.bar(x + 0.2, [row["p99 latency (ms)"] for row in rows], 0.4, color="white",
           edgecolor=colours, hatch="//")
ax_lat.set_xticks(x, labels)
ax_lat.set_ylabel("latency (ms, lower is better)")
ax_lat.legend(handles=[Patch(color="#555555", label="p50"),
                       Patch(facecolor="white", edgecolor="#555555", hatch="//", label="p99")])
fig.suptitle(f"{SIZES['clients']} HTTP clients, {SIZES['model']}, {MODE} mode, {DEVICE}")
fig.tight_layout()

# %%
# The results are saved as JSON when ``$BATCH_INFERENCE_RESULTS_DIR`` is set
# (the docs build sets it), and nowhere when the script runs on its own.

save_results("http_serving", {
    "environment": {k: str(v) for k, v in env.items()},
    "mode": MODE,
    "rounds": ROUNDS,
    "weights": {label: info["weights"] for label, info in health.items()},
    "rows": rows,
})

# %%
# What the server reports: ``/metrics``
# -------------------------------------
# Every variant's app also answers ``GET /metrics`` in Prometheus' format
# (:mod:`batch_inference.metrics`, see :doc:`/metrics`). After the load, this
# page scraped the multi-process server a few times, each time on a new
# connection (uvicorn hands each to one of its worker processes). The model
# lives in one process, and a worker that does not hold it asks that process
# for its stats: every worker reports the same single host, whose counts
# cover the requests of every worker. A few lines of one scrape: requests by
# outcome, batches by why they started, and the batch-size and queue-wait
# histograms' totals.

from prometheus_client.parser import text_string_to_metric_families


def completed(text: str) -> float:
    return next(s.value for family in text_string_to_metric_families(text)
                for s in family.samples if s.name == "batch_inference_requests_total"
                and s.labels["outcome"] == "completed")


counts = {completed(text) for _, text in scrapes}
measured = sum(r.requests for r in runs[REMOTE])
print(f"{len(scrapes)} scrapes, answered by {len({pid for pid, _ in scrapes})} worker "
      f"process(es) of {SIZES['workers']}; completed requests in each: {sorted(counts)} "
      f"(the measured runs alone sent {measured}, the warm-up the rest)")
assert len(counts) == 1 and counts.pop() >= measured, "the workers report different hosts"
shown = ("batch_inference_requests_total", "batch_inference_batches_total",
         "batch_inference_batch_size_sum", "batch_inference_batch_size_count",
         "batch_inference_queue_wait_seconds_sum", "batch_inference_queue_wait_seconds_count",
         "batch_inference_padding_efficiency_ratio_sum")
print("\n".join(line for line in scrapes[0][1].splitlines()
                if line.startswith(shown) and not line.endswith(" 0.0")))

# %%
# Streaming completions over HTTP
# -------------------------------
# Language models are served token by token. The same recipe (a host started
# in the app's ``lifespan``) serves the GPT page's model
# (:doc:`plot_gpt_completion`; here random-initialised, so the text is token
# ids) through an endpoint in the shape of the OpenAI completions API
# (:mod:`benchmarks.completions_app`): ``POST /v1/completions`` with
# ``{"prompt": [token ids], "max_tokens": 32, "stream": true}`` answers
# Server-Sent Events, one ``data: {...}`` chunk per token as the
# :class:`~batch_inference.generation.GenerationHost` produces it, then
# ``data: [DONE]``; with ``"stream": false`` it answers one JSON object.
# ``temperature``, ``top_p`` and ``seed`` are passed on to the host where it
# accepts them. A client that disconnects cancels its request: its row leaves
# the running batch at the next step.
#
# The server runs under uvicorn in a process of its own, on a Unix socket in
# a private directory, as above. This page's streaming client
# (:mod:`benchmarks.sse_load`) runs 1, 4 and 16 closed-loop clients (more in
# full mode), each reading its stream to the end before sending its next
# request, bounded in count and time; it measures the time to the first
# token (TTFT) and to the last, and the tokens all clients received per
# second. The levels take turns, ``ROUNDS`` times, after a warm-up; each
# level's median round (by tokens/s) is reported.

from batch_inference.benchmark.progress_bar import progress  # noqa: E402
from benchmarks.completions_app import APP, CompletionsSettings  # noqa: E402
from benchmarks.generation import make_workload  # noqa: E402
from benchmarks.sse_load import SseLoadResult, sse_load, stream_completion  # noqa: E402

STREAMING = {
    "full": {"model": "full", "levels": [1, 4, 16, 64], "per_client": 4, "max_tokens": 64,
             "max_s": 20.0},
    "quick": {"model": "quick", "levels": [1, 4, 16], "per_client": 2, "max_tokens": 32,
              "max_s": 5.0},
}[MODE]
completions_settings = CompletionsSettings(
    model=STREAMING["model"], device=DEVICE, max_batch_size=MAX_BATCH_SIZE,
    torch_threads=1 if DEVICE == "cpu" else None)  # the GPT page's one CPU thread


def completion_bodies(count: int, vocab_size: int, seed: int) -> list[dict]:
    workload = make_workload(count, (4, 32), (STREAMING["max_tokens"],) * 2, vocab_size, seed)
    return [{"prompt": prompt, "max_tokens": budget} for prompt, budget in workload]


async def left_mid_stream(client: httpx.AsyncClient, body: dict) -> tuple[int, dict]:
    """Read two tokens of a long completion, leave, and wait (bounded) until it is cancelled."""
    before = (await client.get("/health")).json()["stats"]["cancelled"]
    async with client.stream("POST", "/v1/completions",
                             json={**body, "max_tokens": 200, "stream": True}) as response:
        read = 0
        async for line in response.aiter_lines():
            read += line.startswith("data:")
            if read == 2:
                break
    for _ in range(1000):  # at most 10 s
        health = (await client.get("/health")).json()
        if health["stats"]["cancelled"] > before and health["active"] == 0:
            break
        await asyncio.sleep(0.01)
    return read, health


async def measure_streaming(server: UvicornServer) -> tuple[dict, dict, list, tuple]:
    limits = httpx.Limits(max_connections=max(STREAMING["levels"]) + 2)
    transport = httpx.AsyncHTTPTransport(uds=server.uds)
    async with httpx.AsyncClient(transport=transport, base_url="http://completions",
                                 limits=limits) as client:
        info = (await client.get("/health")).raise_for_status().json()
        checks = completion_bodies(4, info["vocab_size"], seed=5)
        same = []
        for body in checks:
            streamed = await stream_completion(client, body)
            whole = (await client.post("/v1/completions", json=body)).raise_for_status().json()
            same.append(streamed.token_ids == whole["choices"][0]["token_ids"])
        left = await left_mid_stream(client, checks[0])
        levels = {level: [] for level in STREAMING["levels"]}
        await sse_load(client, completion_bodies(16, info["vocab_size"], seed=6), clients=4,
                       max_requests=16, max_duration_s=STREAMING["max_s"])  # warm-up
        payloads = completion_bodies(STREAMING["per_client"] * max(levels), info["vocab_size"],
                                     seed=7)
        turns = [level for _ in range(ROUNDS) for level in levels]
        for level in progress(turns, "streaming runs", label=lambda n: f"{n} clients"):
            levels[level].append(await sse_load(
                client, payloads, clients=level,
                max_requests=STREAMING["per_client"] * max(level, 2),
                max_duration_s=STREAMING["max_s"]))
        return info, levels, same, left


with UvicornServer(completions_settings, start_timeout_s=300, env=SERVER_ENV,
                   app=APP) as completions_server:
    stream_info, stream_runs, stream_same, (read_before_leaving, after_leaving) = asyncio.run(
        measure_streaming(completions_server))
print("the completions server stopped:", not completions_server.running)
print(f"weights: {stream_info['weights']}; sampling keywords the host accepts: "
      f"{stream_info['sampling'] or 'none (greedy only)'}")
print(f"streamed tokens == the JSON answer's, for {len(stream_same)} prompts: {all(stream_same)}")
print(f"a client that read {read_before_leaving} tokens of 200 and left: requests cancelled "
      f"{after_leaving['stats']['cancelled']}, still answered {after_leaving['active']}")
assert all(stream_same)

# %%
# Each level's median round: the tokens every client received per second
# together, and what one reader sees: its time to first token, its time to
# the last token, and its tokens per second after the first.


def median_stream(results: list[SseLoadResult]) -> SseLoadResult:
    return sorted(results, key=lambda r: r.tokens_per_s)[(len(results) - 1) // 2]


stream_medians = {level: median_stream(results) for level, results in stream_runs.items()}
one_client = stream_medians[STREAMING["levels"][0]].tokens_per_s
stream_rows = [{
    "Clients": level,
    "Requests": r.requests,
    "Tokens": r.tokens,
    "Tokens/s (all clients)": round(r.tokens_per_s, 1),
    "vs 1 client": f"{r.tokens_per_s / one_client:.2f}x",
    "TTFT p50 (ms)": round(r.percentile_s("ttft_s", 50) * 1e3, 1),
    "TTFT p99 (ms)": round(r.percentile_s("ttft_s", 99) * 1e3, 1),
    "Latency p50 (ms)": round(r.percentile_s("latency_s", 50) * 1e3, 1),
    "Latency p99 (ms)": round(r.percentile_s("latency_s", 99) * 1e3, 1),
    "Tokens/s per reader": round(r.decode_tokens_per_s, 1),
    "Ended by": r.stopped_by,
} for level, r in stream_medians.items()]
pd.DataFrame(stream_rows)

# %%

fig, (ax_tps, ax_ttft) = plt.subplots(1, 2, figsize=(10, 3.6))
levels_x = [row["Clients"] for row in stream_rows]
ax_tps.plot(levels_x, [row["Tokens/s (all clients)"] for row in stream_rows], marker="o",
            label="all clients")
ax_tps.plot(levels_x, [row["Tokens/s per reader"] for row in stream_rows], marker="s",
            label="one reader")
ax_tps.set_xscale("log", base=2)
ax_tps.set_xlabel("concurrent streaming clients")
ax_tps.set_ylabel("tokens / s (higher is better)")
ax_tps.legend()
for name, style in (("TTFT p50 (ms)", "o-"), ("TTFT p99 (ms)", "s--")):
    ax_ttft.plot(levels_x, [row[name] for row in stream_rows], style, label=name[5:8])
ax_ttft.set_xscale("log", base=2)
ax_ttft.set_xlabel("concurrent streaming clients")
ax_ttft.set_ylabel("time to first token (ms)")
ax_ttft.legend()
fig.suptitle(f"SSE streaming over HTTP, GPT page's {STREAMING['model']} model, {DEVICE}")
fig.tight_layout()

save_results("http_streaming", {
    "environment": {k: str(v) for k, v in env.items()},
    "mode": MODE,
    "rounds": ROUNDS,
    "weights": stream_info["weights"],
    "streamed_equals_json": all(stream_same),
    "rows": stream_rows,
})
plt.show()
