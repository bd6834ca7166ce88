"""
Scheduling policies: how close each batcher gets to the offline ceiling
=======================================================================

Dynamic batching can at best reach the throughput of the same queries run
**offline**, sorted by length, in full batches: nothing waits, almost nothing
is padded, no call is small. This page measures that **ceiling** and three
ways of forming batches on the same queries, in the same run, **on the
machine that builds these docs** (printed below):

* :class:`~batch_inference.batcher.SeqBatcher`: the waiting requests, in
  arrival order, padded to the longest one;
* :class:`~batch_inference.batcher.BucketSeqBatcher` with buckets
  ``[16, 32, 64]``: a batch holds one length bucket only;
* :class:`~batch_inference.batcher.LengthAwareBatcher`: no buckets to choose;
  the waiting requests are sorted by length and cut where padding would cost
  more than a separate call; the run holding the oldest request goes first.

Each runs at several concurrency levels (client threads, each sending one
query at a time), with ``max_batch_size=32``. For each: queries per second,
median and 99th-percentile latency, padding efficiency (real tokens / computed
tokens), average batch size, and the percentage of the ceiling. Then each
policy's own limit: the same closed loop served by the policy's ``select`` in
simulated time, from a model of a call's cost fitted in the same run, which
shows how much of the gap to the ceiling is the policy's and how much the
host's.

**quick** mode (a CPU): 400 queries of 1 to 64 tokens through the real
``all-MiniLM-L6-v2`` weights. **full** mode (a CUDA GPU): 2000 queries of 1 to
128 tokens through ``bert-base-uncased`` (random weights of the same shape when
the pretrained ones are not available offline; printed below). Set
``BATCH_INFERENCE_MODE`` to ``quick`` or ``full`` to choose.
"""

# %%
# Set-up
# ------
# The measuring code lives in the repository's ``benchmarks/scheduling.py``
# (tested); this page chooses the sizes and shows the results.

import sys
from pathlib import Path

sys.path.insert(0, str(Path(sys.argv[0]).resolve().parents[1]))  # the repository root, for benchmarks/

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib.pyplot as plt
import pandas as pd
import torch
from matplotlib.patches import Patch
from transformers.utils import logging as transformers_logging

from batch_inference.benchmark import environment, format_environment, run_mode, save_results
from batch_inference.benchmark.simulate import fit_cost_model
from benchmarks.bert import (
    BertEmbedding,
    load_bert,
    make_queries,
    random_batch,
    random_lengths,
)
from benchmarks.scheduling import (
    compare_policies,
    run_policy,
    simulate_policies,
    standard_policies,
)

transformers_logging.disable_progress_bar()
MODE = run_mode()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SIZES = {
    # call_cost_tokens: a guess per device; the cost model fitted below prints this machine's.
    "full": {"model": "bert-base", "queries": 2000, "longest": 128, "clients": [16, 64, 256],
             "repeats": 2, "call_cost_tokens": 1024},
    "quick": {"model": "minilm", "queries": 400, "longest": 64, "clients": [4, 16, 64],
              "repeats": 1, "call_cost_tokens": 64},
}[MODE]
MAX_BATCH_SIZE = 32

loaded = load_bert(SIZES["model"], device=DEVICE)
model = BertEmbedding(loaded.model, device=DEVICE)
synchronize = torch.cuda.synchronize if DEVICE == "cuda" else None
env = environment(MODE, weights=loaded.weights, queries=SIZES["queries"],
                  clients=SIZES["clients"], max_batch_size=MAX_BATCH_SIZE)
print(format_environment(env))

lengths = random_lengths(SIZES["queries"], 1, SIZES["longest"], seed=0)
queries = make_queries(lengths, loaded.vocab_size, seed=0)

# %%
# The policies
# ------------
# One :class:`~benchmarks.scheduling.Policy` per batcher
# (:func:`~benchmarks.scheduling.standard_policies`), all with
# the host's defaults otherwise (``max_delay_s=0``: a batch starts as soon as
# the model is free).

policies = standard_policies(MAX_BATCH_SIZE, call_cost_tokens=SIZES["call_cost_tokens"])
print("policies:", ", ".join(p.name for p in policies))

# %%
# Measure
# -------
# Every policy run (a fresh host, a warm-up, then all the queries) comes right
# after a run of the ceiling (the same queries sorted by length, in padded
# batches of 32, back to back), and is compared with it: a disturbance of the
# machine hits both alike. With several repeats, medians are shown. Run on
# its own from a terminal, the page shows a progress bar on stderr, one step
# per measured run (the docs build shows none).

results, ceilings = compare_policies(
    model, policies, queries, SIZES["clients"], ceiling_batch_size=MAX_BATCH_SIZE,
    repeats=SIZES["repeats"], synchronize=synchronize,
)
ceiling = results[0].ceiling_qps
print(f"offline ceiling: {ceiling:.1f} queries/s (median of {len(ceilings)} runs, "
      f"{min(ceilings):.1f} to {max(ceilings):.1f})")

# %%
# Results
# -------

table = pd.DataFrame([
    {
        "Policy": r.policy,
        "Clients": r.clients,
        "Queries/s": round(r.qps, 1),
        "% of ceiling": round(r.pct_of_ceiling, 1),
        "p50 latency (ms)": round(r.p50_ms, 1),
        "p99 latency (ms)": round(r.p99_ms, 1),
        "Padding efficiency": f"{r.padding_efficiency:.0%}",
        "Avg batch": round(r.mean_batch_size, 1),
    }
    for r in sorted(results, key=lambda r: (r.clients, r.policy))
])
table

# %%
# At the highest concurrency, the length-aware policy against the bucket one:

top = max(SIZES["clients"])
by_policy = {r.policy: r for r in results if r.clients == top}
aware, bucket = by_policy["LengthAwareBatcher"], by_policy["BucketSeqBatcher"]
print(f"{top} clients: LengthAwareBatcher {aware.qps:.1f} queries/s "
      f"({aware.pct_of_ceiling:.0f}% of the ceiling), "
      f"{aware.qps / bucket.qps:.2f}x BucketSeqBatcher ({bucket.pct_of_ceiling:.0f}%)")

# %%
# Bounded waits
# -------------
# With ``max_delay_s=0`` every batch serves the oldest waiting request, but a
# request that arrives behind many others still waits for several batches.
# ``max_delay_s`` bounds that: once requests have waited that long, they all go
# in the next batch. So no request should wait more than ``max_delay_s`` plus
# one batch (the one running when it became due) for its batch to start. The
# length-aware policy with a delay of about three batches, at the highest
# concurrency, in a run of its own:

DELAY_S = round(3 * aware.max_model_ms / 1e3, 2)
bounded_policy = standard_policies(MAX_BATCH_SIZE, call_cost_tokens=SIZES["call_cost_tokens"],
                                   delay_s=DELAY_S)[-1]
bounded = run_policy(model, bounded_policy, queries, top)
bound_ms = DELAY_S * 1e3 + bounded.max_model_ms
verdict = "within" if bounded.max_queue_wait_ms <= bound_ms else "OVER"
print(f"max_delay_s={DELAY_S}: {bounded.qps:.1f} queries/s; the longest a request waited for "
      f"its batch to start: {bounded.max_queue_wait_ms:.0f} ms, {verdict} the bound "
      f"(max_delay_s + the longest batch = {bound_ms:.0f} ms)")

# %%
# Latency versus throughput
# -------------------------
# Each point is one concurrency level (more clients: further right and up).
# Further right is more throughput; lower is less waiting. The dashed line
# is the offline ceiling.

fig, (ax_p50, ax_p99) = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
colors = {"SeqBatcher": "#4c72b0", "BucketSeqBatcher": "#55a868",
          "LengthAwareBatcher": "#c44e52"}
for policy in colors:
    rows = sorted((r for r in results if r.policy == policy), key=lambda r: r.clients)
    for ax, key in ((ax_p50, "p50_ms"), (ax_p99, "p99_ms")):
        ax.plot([r.qps for r in rows], [getattr(r, key) for r in rows], "o-",
                color=colors[policy], label=policy)
        for r in rows:
            ax.annotate(str(r.clients), (r.qps, getattr(r, key)), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
for ax, title in ((ax_p50, "median latency"), (ax_p99, "99th-percentile latency")):
    ax.axvline(ceiling, color="black", linestyle="--", linewidth=1, label="offline ceiling")
    ax.set_xlabel("queries / s")
    ax.set_ylabel(f"{title} (ms)")
    ax.set_title(title)
ax_p50.legend(fontsize=8)
fig.suptitle(f"{SIZES['queries']} queries, {MODE} mode, {DEVICE}; labels: client threads")
fig.tight_layout()
plt.show()

# %%
# Percentage of the ceiling
# -------------------------

fig, ax = plt.subplots(figsize=(8, 3.6))
width = 0.8 / len(colors)
for k, policy in enumerate(colors):
    rows = sorted((r for r in results if r.policy == policy), key=lambda r: r.clients)
    xs = [i + (k - 1) * width for i in range(len(rows))]
    ax.bar(xs, [r.pct_of_ceiling for r in rows], width, color=colors[policy], label=policy)
ax.set_xticks(range(len(SIZES["clients"])), [f"{c} clients" for c in SIZES["clients"]])
ax.axhline(100, color="black", linestyle="--", linewidth=1)
ax.set_ylabel("% of the offline ceiling")
ax.legend(fontsize=8, loc="lower right")
fig.tight_layout()
plt.show()

# %%
# Each policy's own limit
# -----------------------
# How much of the gap to the ceiling is the policy's, and how much the host's?
# A model call's time is fitted from a few real calls on this machine
# (:func:`~batch_inference.benchmark.simulate.fit_cost_model`: a fixed cost
# per call, a cost per padded token, and attention's quadratic term). Then each
# policy's own ``select`` serves the same closed loop in simulated time, with
# no threads, no queue and no hand-offs
# (:func:`~batch_inference.benchmark.simulate.simulate_closed_loop`). That is
# the best the policy itself can do on this workload; the measured percentage
# of the ceiling over the simulated one is what the host keeps. The model is a
# fit, good to a few percent (compare the two ceilings printed below), so a
# figure near 100% means the host loses nothing measurable.


cost = fit_cost_model(model.predict_batch,
                      lambda rows, length: random_batch(rows, length, loaded.vocab_size, DEVICE),
                      rows=(1, 8, 32),
                      lengths=(8, SIZES["longest"] // 2, SIZES["longest"]),
                      synchronize=synchronize)
print(f"fitted: {cost.call_s * 1e3:.2f} ms per call + {cost.token_s * 1e6:.2f} us per padded "
      f"token + {cost.attention_s * 1e9:.2f} ns per token x length; a call costs as much as "
      f"{cost.call_cost_tokens:.0f} tokens")
simulated_ceiling, simulated = simulate_policies(
    policies, lengths, SIZES["clients"], cost,
    lambda length: random_batch(1, length, loaded.vocab_size), MAX_BATCH_SIZE)
print(f"ceiling: simulated {simulated_ceiling.qps:.1f} queries/s, measured {ceiling:.1f}")
simulated_pct = {key: 100 * run.qps / simulated_ceiling.qps for key, run in simulated.items()}
limits = pd.DataFrame([
    {
        "Policy": r.policy,
        "Clients": r.clients,
        "Simulated % of ceiling": round(simulated_pct[r.policy, r.clients], 1),
        "Measured % of ceiling": round(r.pct_of_ceiling, 1),
        "Host keeps (measured / simulated)":
            f"{r.pct_of_ceiling / simulated_pct[r.policy, r.clients]:.0%}",
        "Simulated calls": simulated[r.policy, r.clients].calls,
    }
    for r in sorted(results, key=lambda r: (r.clients, r.policy))
])
limits

# %%
# So at the highest concurrency no host could make the length-aware policy
# faster than this multiple of the bucket policy on this workload (both
# simulated, with nothing lost to the host):

sim_aware = simulated["LengthAwareBatcher", top]
sim_bucket = simulated["BucketSeqBatcher", top]
print(f"{top} clients, simulated: LengthAwareBatcher {sim_aware.qps:.1f} queries/s, "
      f"BucketSeqBatcher {sim_bucket.qps:.1f}: {sim_aware.qps / sim_bucket.qps:.2f}x "
      f"(measured: {aware.qps / bucket.qps:.2f}x)")

fig, ax = plt.subplots(figsize=(8, 3.4))
names = list(colors)
xs = range(len(names))
ax.bar([x - 0.2 for x in xs], [by_policy[n].pct_of_ceiling for n in names], 0.4,
       color=[colors[n] for n in names])
ax.bar([x + 0.2 for x in xs],
       [simulated_pct[n, top] for n in names], 0.4,
       color="white", edgecolor=[colors[n] for n in names], hatch="//")
ax.set_xticks(list(xs), names)
ax.axhline(100, color="black", linestyle="--", linewidth=1)
ax.set_ylabel("% of the offline ceiling")
ax.set_title(f"{top} clients: measured against each policy's own limit")
ax.legend(handles=[Patch(color="#8c8c8c", label="measured"),
                   Patch(facecolor="white", edgecolor="#8c8c8c", hatch="//",
                         label="simulated (no host)")],
          fontsize=8, loc="lower right")
fig.tight_layout()
plt.show()

# %%
# The figures are saved for the docs build (when ``$BATCH_INFERENCE_RESULTS_DIR``
# is set), never typed by hand.

save_results("scheduling_policies", {
    "environment": {k: str(v) for k, v in env.items()},
    "mode": MODE,
    "ceiling_qps": ceiling,
    "ceilings_qps": ceilings,
    "results": [r.record() for r in results],
    "bounded": {"max_delay_s": DELAY_S, **bounded.record()},
    "cost_model": cost.record(),
    "simulated_ceiling_qps": simulated_ceiling.qps,
    "simulated": [
        {"policy": policy, "clients": clients, "qps": run.qps, "calls": run.calls,
         "padding_efficiency": run.padding_efficiency}
        for (policy, clients), run in simulated.items()
    ],
})
