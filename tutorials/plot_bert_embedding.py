"""
BERT embedding benchmark: dynamic batching versus one query at a time
=====================================================================

This page reproduces the benchmark of batch-inference 1.0's *Bert Embedding*
page and **measures it on the machine that builds these docs** (printed below):
every number, table and figure on this page comes from running this script.

What is measured: many clients each send one query (``input_ids`` and
``attention_mask`` of shape ``(1, length)``) and wait for its embedding
(``last_hidden_state``). We time how long it takes to serve all queries

* **Baseline**: two threads call the model's ``predict_batch`` directly, one
  query at a time (as batch-inference 1.0's BERT page did);
* **Sequence Batcher** (:doc:`/batcher/seq_batcher`) with ``max_batch_size``
  4, 8 and 32: 64 client threads call ``host.predict``; requests that wait
  together are padded to the longest one and run as one batch;
* **Bucket Sequence Batcher** (:doc:`/batcher/bucket_seq_batcher`) with
  ``max_batch_size`` 32 and buckets ``[16, 32, 64]``: only queries of one
  length bucket share a batch, so less padding is computed.

Two sizes, chosen once from the hardware (``batch_inference.benchmark.run_mode``):

* **full** (on a CUDA GPU): the size of batch-inference 1.0's BERT page, 2000 queries through
  ``bert-base-uncased`` (pretrained where the weights are available offline,
  otherwise a randomly initialised model of the same shape: the compute is the
  same; the page prints which one ran), 64 clients;
* **quick** (on a CPU): 400 queries through the real ``all-MiniLM-L6-v2``
  weights (a 6-layer BERT), 64 clients, so the docs build stays short.

Each method runs three times, interleaved with the others; the table shows
each method's median run. Every run's first answers are compared with the
model run on each query alone: a difference beyond the tolerance printed below
stops the page with an error (and so fails the docs build).

Set ``BATCH_INFERENCE_MODE=quick`` or ``BATCH_INFERENCE_MODE=full`` to choose,
e.g. ``BATCH_INFERENCE_MODE=full python tutorials/plot_bert_embedding.py``.
"""

# %%
# Set-up
# ------
# The workload lives in the repository's ``benchmarks/bert.py`` and the measuring
# code in :mod:`batch_inference.benchmark` (both tested); this script only chooses the sizes and prints
# the results.

import sys
from pathlib import Path

sys.path.insert(0, str(Path(sys.argv[0]).resolve().parents[1]))  # the repository root, for benchmarks/

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from transformers.utils import logging as transformers_logging

from batch_inference import ModelHost
from batch_inference.batcher.bucket_seq_batcher import BucketSeqBatcher
from batch_inference.batcher.seq_batcher import SeqBatcher
from batch_inference.benchmark import (
    MethodResult,
    answer_tolerance,
    closed_loop,
    comparison_table,
    environment,
    format_environment,
    measure_host,
    median_of_rounds,
    model_dtype,
    on_own_thread,
    run_mode,
    save_results,
)
from benchmarks.bert import BUCKETS, BertEmbedding, load_bert, make_queries, random_lengths

transformers_logging.disable_progress_bar()  # no loading bars in the page's output
MODE = run_mode()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SIZES = {
    "full": {"model": "bert-base", "queries": 2000, "clients": 64, "warmup": 256},
    "quick": {"model": "minilm", "queries": 400, "clients": 64, "warmup": 64},
}[MODE]
ROUNDS = 3  # each method runs this many times, interleaved; its median run is reported
CHECKED = 32  # answers compared with the model run on each query alone
# The model's dtype: bf16 (or fp16) in full mode on a GPU, where tensor cores run half
# precision, float32 on a CPU (``BATCH_INFERENCE_DTYPE`` overrides).
DTYPE = model_dtype(MODE, DEVICE)
# Largest absolute difference allowed between a batched answer and the answer alone: rounding
# differs with the shape of the batch (more so between a GPU's shape-tuned kernels, and in half
# precision), so the tolerance is set per dtype.
TOLERANCE = max(answer_tolerance(DTYPE), 1e-4 if DEVICE == "cpu" else 1e-3)
SHORTEST, LONGEST = 4, 100  # query lengths in tokens: every bucket gets queries

loaded = load_bert(SIZES["model"], device=DEVICE, dtype=DTYPE)
model = BertEmbedding(loaded.model, device=DEVICE)
env = environment(MODE, weights=loaded.weights, queries=SIZES["queries"],
                  clients=SIZES["clients"], rounds=ROUNDS, dtype=str(DTYPE).removeprefix("torch."),
                  **{"tolerance (batched vs alone)": TOLERANCE})
print(format_environment(env))

# %%
# The queries
# -----------
# Query lengths are drawn uniformly between a few tokens and well over 64, so
# they span all four buckets ``[1, 16]``, ``[17, 32]``, ``[33, 64]`` and
# ``[65, ...)``. Token ids are random: the model's cost depends on the length
# only.

lengths = random_lengths(SIZES["queries"], SHORTEST, LONGEST, seed=0)
queries = make_queries(lengths, loaded.vocab_size, seed=0)
warmup = make_queries(random_lengths(SIZES["warmup"], SHORTEST, LONGEST, seed=1),
                      loaded.vocab_size, seed=1)

fig, ax = plt.subplots(figsize=(7, 3.2))
ax.hist(lengths, bins=np.arange(0, LONGEST + 5, 4), color="#4c72b0", edgecolor="white")
for edge in BUCKETS:
    ax.axvline(edge + 0.5, color="#c44e52", linestyle="--", linewidth=1)
ax.set_xlabel("query length (tokens); dashed: bucket edges 16 | 32 | 64")
ax.set_ylabel("queries")
ax.set_title(f"Lengths of the {len(lengths)} queries")
fig.tight_layout()
plt.show()

# %%
# The methods
# -----------
# **Baseline**: two threads call ``predict_batch`` directly, each with one
# query at a time. **Batchers**: each run gets its own
# :class:`~batch_inference.ModelHost` over the same model object, a short
# warm-up through the host, then the measured run with 64 client threads; the
# average batch size and the padding are read from ``host.stats()`` over the
# measured run only. Every run also checks the answers of its first queries
# against the model run on each query alone: batching must not change what a
# caller gets (each output trimmed back to its own length, equal within
# ``TOLERANCE``); a run that fails the check raises, and the page stops. The reference
# answers and the comparisons are computed on a thread of their own
# (:func:`~batch_inference.benchmark.on_own_thread`): on a CPU, torch work on
# the main thread would leave an OpenMP team behind that slows every later
# call on a host's worker thread.

alone = on_own_thread(lambda: [model.predict_batch(*query) for query in queries[:CHECKED]])
max_errors = [0.0]


class BatchedAnswerDiffers(AssertionError):
    """A batched answer is not the answer the model gives for that query alone."""


def check(method: str, outputs: list) -> None:
    def compare() -> None:  # tensor maths: off the main thread too
        for i, (got, expected) in enumerate(zip(outputs, alone)):
            if got.shape != expected.shape:
                raise BatchedAnswerDiffers(f"{method}: query {i} got shape {tuple(got.shape)}, "
                                           f"alone {tuple(expected.shape)}")
            error = float((got - expected).abs().max())
            if not error <= TOLERANCE:  # NaN fails too
                raise BatchedAnswerDiffers(f"{method}: query {i} differs from its answer alone "
                                           f"by {error:.2e}, over the tolerance {TOLERANCE:.0e}")
            max_errors.append(error)

    on_own_thread(compare)
    outputs.clear()  # checked; do not hold every embedding in memory


def baseline() -> MethodResult:
    closed_loop(model.predict_batch, warmup, clients=2)
    load = closed_loop(model.predict_batch, queries, clients=2, keep_outputs=True)
    check("Baseline", load.outputs)
    return MethodResult("Baseline", load, None, 1.0)


def batched(name: str, batcher, max_batch_size: int):
    def run() -> MethodResult:
        with ModelHost(model_obj=model, batcher=batcher, max_batch_size=max_batch_size) as host:
            result = measure_host(name, host, queries, SIZES["clients"], warmup=warmup,
                                  keep_outputs=True)
        check(f"{name} (max batch {max_batch_size})", result.load.outputs)
        return result
    return run


methods = [
    baseline,
    batched("Sequence Batcher", SeqBatcher(padding_tokens=[0, 0], tensor="pt"), 4),
    batched("Sequence Batcher", SeqBatcher(padding_tokens=[0, 0], tensor="pt"), 8),
    batched("Sequence Batcher", SeqBatcher(padding_tokens=[0, 0], tensor="pt"), 32),
    batched("Bucket Sequence Batcher",
            BucketSeqBatcher(padding_tokens=[0, 0], buckets=BUCKETS, tensor="pt"), 32),
]

# %%
# Measure
# -------
# Every method runs ``ROUNDS`` times, interleaved (round 1 runs all five, then
# round 2...), so a slow phase of the machine hits every method alike; each
# method's median run is reported. Run on its own from a terminal, the page
# shows a progress bar on stderr, one step per measured run (the docs build
# shows none).

results = median_of_rounds(methods, ROUNDS, desc="BERT runs")
for r in results:
    setting = "" if r.max_batch_size is None else f" (max batch {r.max_batch_size})"
    busy = "" if r.model_busy is None else f", model busy {r.model_busy:.0%} of the run"
    print(f"{r.method}{setting}: median {r.load.wall_s:.2f} s for {r.load.queries} queries, "
          f"avg batch {r.mean_batch_size:.2f}, padding efficiency {r.padding_efficiency:.0%}"
          f"{busy}")
print(f"first {CHECKED} answers of every run, batched vs alone: "
      f"largest difference {max(max_errors):.1e} (tolerance {TOLERANCE:.0e})")

# %%
# Results
# -------
# The columns of batch-inference 1.0's BERT page, plus throughput and the speed-up over the baseline
# (execution time in seconds).

records = comparison_table(results)
table = pd.DataFrame(records)
table["Execution Time"] = table["Execution Time"].map("{:.2f}s".format)
table

# %%
# Latency and padding of the same runs: the median and 99th-percentile time
# a client waited for its answer, the share of computed tokens that were
# real (not padding), and how busy the model was: its seconds in
# ``predict_batch`` (``host.stats().model_busy_s``) over the run's wall time. With 64 clients and one model, a query waits for the
# queries ahead of it, so batched latency is roughly 64 queries' worth of
# work; the baseline's two threads time only their own call (the other
# queries wait in the list, untimed), so compare its throughput, not its
# latency.

pd.DataFrame({
    "Method": [r.method for r in results],
    "Max Batch Size Setting": ["/" if r.max_batch_size is None else r.max_batch_size
                               for r in results],
    "p50 latency (ms)": [round(r.load.p50_s * 1e3, 1) for r in results],
    "p99 latency (ms)": [round(r.load.p99_s * 1e3, 1) for r in results],
    "Padding efficiency": [f"{r.padding_efficiency:.0%}" for r in results],
    "Model busy": ["/" if r.model_busy is None else f"{r.model_busy:.0%}" for r in results],
})

# %%
# Throughput
# ----------

labels = [r["Method"].replace(" Batcher", "\nBatcher")
          + ("" if r["Max Batch Size Setting"] == "/" else f"\n(max {r['Max Batch Size Setting']})")
          for r in records]
qps = [r["Queries/s"] for r in records]
fig, ax = plt.subplots(figsize=(8, 3.8))
bars = ax.bar(labels, qps, color=["#8c8c8c"] + ["#4c72b0"] * 3 + ["#55a868"])
for bar, r in zip(bars, records):
    ax.annotate(f"{r['Speed-up']:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center", va="bottom", fontsize=9)
ax.set_ylabel("queries / s (higher is better)")
ax.set_title(f"{SIZES['queries']} queries, {SIZES['clients']} clients, {MODE} mode, {DEVICE}")
ax.margins(y=0.15)
fig.tight_layout()
plt.show()

# %%
# The docs build quotes these results on the home page: they are saved as
# JSON when ``$BATCH_INFERENCE_RESULTS_DIR`` is set (the build sets it), and
# nowhere when the script runs on its own.

saved_to = save_results("bert_embedding", {
    "environment": {k: str(v) for k, v in env.items()},
    "mode": MODE,
    "weights": loaded.weights,
    "lengths": [SHORTEST, LONGEST],
    "rounds": ROUNDS,
    "tolerance": TOLERANCE,
    "largest_difference": max(max_errors),
    "dtype": str(DTYPE).removeprefix("torch."),
    "model_busy": {f"{r.method} ({r.max_batch_size})": r.model_busy for r in results},
    "rows": records,
})
