"""
Scaling out with Ray Serve
==========================

Past one machine, teams serve on `Ray Serve <https://docs.ray.io/en/latest/serve/>`_:
replicas across a cluster, autoscaling, handles and an HTTP proxy.
:func:`batch_inference.ray.serve.deployment` turns a model class into a Serve
deployment whose every replica runs one :class:`~batch_inference.ModelHost`
(see :doc:`/ray`). This page **measures it on the machine that builds these
docs** (printed below), side by side with Ray Serve's own batching,
``@serve.batch``, written as Ray's batching guide writes it: a handler that
takes a list and returns a list, here padding the list of variable-length
queries to its longest and trimming each answer back.

Compared in one run, on a local Ray cluster that this page starts and stops:

* **BERT** (the BERT tutorial's variable-length queries, :doc:`plot_bert_embedding`;
  quick: the real ``all-MiniLM-L6-v2`` weights on a CPU, full: ``bert-base``), one
  replica each, ``max_batch_size`` 32, the same wait for a batch to fill
  (``batch_wait_timeout_s`` and ``max_delay_s``, 10 ms; ``LengthAwareBatcher``
  keeps its ``max_delay_s`` of 0, as its own page advises: a short one forces
  badly padded batches): ``@serve.batch`` with
  ``max_ongoing_requests`` raised to 64 (Serve's default, 5, would cap its
  batches at 5: Ray issue 43288), and the library's deployment with
  :class:`~batch_inference.batcher.BucketSeqBatcher` (buckets 16 | 32 | 64) and
  with :class:`~batch_inference.batcher.LengthAwareBatcher` (its
  ``max_ongoing_requests``, 64, set from ``max_batch_size`` by the rule). The
  answers of the first 32 queries, in every round, are compared with the model
  run on each query alone.
* **A lone request**: the library's deployment of a model that returns its
  input, against Ray's own handle round trip (a deployment that returns its
  argument).
* **Replica scaling**: the simulated accelerator of :doc:`plot_accelerator`
  (a model that sleeps while the "device" works), slowed so that on a small
  CPU the device, not Serve's own work per request, is the limit; 1 replica,
  then scaled in place to 2, with as many callers as the replicas let in
  (``max_ongoing_requests``, 64, per replica; more would wait in Serve's
  router, which retries a full deployment after backoffs of up to a second).

Requests come from closed-loop asyncio callers on Serve handles in the driver,
bounded in count and time; each measurement is the median of three rounds,
interleaved between variants, after a warm-up. Read requests/s and latency
as *relative* figures: the driver, Ray's processes and the replicas share
this machine's cores.

How to read the batch sizes: a replica's batch can only hold the requests
that reached it while the previous batch ran. Each request costs Serve some
CPU work on its way (the handle's router, the replica's event loop); where
that work, not the model, is the limit (a small CPU busy with the driver
and Ray's own processes), fewer requests arrive per batch than
``max_ongoing_requests`` would let in, and the average batch stays below
``max_batch_size`` whatever the settings.

**Network safety.** Ray finds its own address by probing ``8.8.8.8`` and
Serve's replicas listen on every interface, so the whole Ray part runs as a
child process in a network namespace whose only interface is loopback
(:mod:`benchmarks.ray_local`; the harness is ``benchmarks/ray_serve_bench.py``),
and reports JSON. Where the namespace cannot be made (not root, no
``unshare``) or Ray is not installed, the page says why and shows no rows.
"""

# %%
# Set-up
# ------

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(sys.argv[0]).resolve().parents[1]))  # the repository root, for benchmarks/

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib.pyplot as plt
import pandas as pd
import torch

from batch_inference.benchmark import environment, format_environment, run_mode, save_results
from batch_inference.benchmark.progress_bar import progress
from benchmarks.ray_local import netns_available, run_isolated

MODE = run_mode()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SETTINGS = {
    "full": {"model": "bert-base", "queries": 512, "warmup": 128, "clients": 64, "rounds": 3,
             "round_limit_s": 20.0, "checked": 32, "lone": 500,
             "accelerator_clients_per_replica": 64, "accelerator_round_s": 3.0, "accelerator_warmup_s": 1.0,
             "accelerator_max_requests": 20000},
    "quick": {"model": "minilm", "queries": 96, "warmup": 32, "clients": 64, "rounds": 3,
              "round_limit_s": 6.0, "checked": 32, "lone": 300,
              "accelerator_clients_per_replica": 64, "accelerator_round_s": 2.0, "accelerator_warmup_s": 1.0,
              "accelerator_max_requests": 5000},
}[MODE]
SETTINGS["device"] = DEVICE
# Bounds the whole Ray run (its own timings are printed below), with room for a machine
# that is busy with other work.
TIMEOUT_S = {"full": 600.0, "quick": 600.0}[MODE]
TOLERANCE = 1e-4 if DEVICE == "cpu" else 1e-3  # fp32, as on the BERT page

try:
    import ray

    RAY = ray.__version__
except ImportError:
    RAY = None
ISOLATED, WHY_NOT = netns_available()
if RAY is None:
    ISOLATED, WHY_NOT = False, "Ray is not installed (pip install 'batch_inference[ray]')"

env = environment(MODE, ray=RAY or "not installed", model=SETTINGS["model"],
                  clients=SETTINGS["clients"], rounds=SETTINGS["rounds"],
                  isolated=("loopback-only network namespace" if ISOLATED
                            else f"no: {WHY_NOT}"))
print(format_environment(env))

# %%
# Run the Ray measurements in their namespace
# -------------------------------------------
# One child process starts Ray and Serve, deploys, measures, stops them and
# prints its results as JSON; it is killed if it runs past ``TIMEOUT_S``.

results = None
if ISOLATED:
    for _ in progress(["ray"], desc="Ray Serve run (one isolated process)"):
        try:
            done = run_isolated(["-m", "benchmarks.ray_serve_bench", json.dumps(SETTINGS)],
                                timeout_s=TIMEOUT_S)
        except subprocess.TimeoutExpired as expired:  # its progress lines say how far it got
            log = expired.stderr if isinstance(expired.stderr, str) else ""
            progress_lines = "\n".join(line for line in log.splitlines() if line.startswith("["))
            raise RuntimeError(f"the Ray run took over {TIMEOUT_S:.0f} s:\n{progress_lines}"
                               ) from None
    if done.returncode != 0:
        raise RuntimeError(f"the Ray run failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    results = json.loads(done.stdout.strip().splitlines()[-1])
    timings = results["timings"]
    print(f"Ray {results['ray_version']}: started in {timings['ray_init_s']:.1f} s, "
          f"whole run {timings['total_s']:.1f} s; weights: {results['weights']}")
    print("sockets outside 127.0.0.0/8 or interfaces besides lo:", results["sockets"] or "none")
else:
    print(f"Skipped: the Ray rows need a loopback-only network namespace; {WHY_NOT}.")

# %%
# Same answers everywhere
# -----------------------
# Every answer of the checked queries, in every round, against the model run
# on that query alone: the largest absolute difference (infinite would mean an
# answer of the wrong shape, e.g. not trimmed back to its query).

if results:
    for row in results["bert"]:
        print(f"{row['label']}: largest difference {row['max_error']:.1e} "
              f"(tolerance {TOLERANCE:.0e}); failed calls: {row['errors'] or 'none'}")
        assert row["max_error"] <= TOLERANCE and not row["errors"], row["label"]
    for row in results["scaling"]:
        assert row["wrong_answers"] == 0 and not row["errors"], row

# %%
# Results
# -------
# Requests/s (median round), latency percentiles over every measured request,
# the average batch each replica ran, and padding efficiency (tokens of the
# queries over tokens computed).


def table(rows: list[dict], workload: str) -> list[dict]:
    return [{
        "Workload": workload,
        "Deployment": row["label"],
        "Replicas": row["replicas"],
        "Max batch": row["max_batch_size"],
        "Callers": row.get("clients", SETTINGS["clients"]),
        "Requests/s": round(row["requests_per_s"], 1),
        "p50 (ms)": round(row["p50_ms"], 1),
        "p99 (ms)": round(row["p99_ms"], 1),
        "Avg batch": round(row["mean_batch_size"], 1),
        "Padding eff.": round(row["padding_efficiency"], 2),
    } for row in rows]


rows = (table(results["bert"], f"BERT ({SETTINGS['model']})")
        + table(results["scaling"], "simulated accelerator")) if results else []
pd.DataFrame(rows)

# %%
# Targets
# -------
# * the library's deployment at least 1.3x ``@serve.batch``'s requests/s on the
#   BERT queries (same replicas, same max batch, ``@serve.batch`` given the same
#   ``max_ongoing_requests``);
# * under load, each replica's average batch at least 80% of ``max_batch_size``
#   (with ``BucketSeqBatcher`` a batch holds one bucket's queries, and
#   ``LengthAwareBatcher`` cuts where padding would cost more than a call: both
#   trade batch size for padding by design; ``ConcatBatcher`` on the accelerator
#   has no such cut);
# * a lone request adds at most 0.5 ms to Ray's own handle round trip.

targets = []
if results:
    bert = {row["label"]: row for row in results["bert"]}
    fair = next(row for label, row in bert.items() if "@serve.batch" in label
                and "default" not in label)
    for label, row in bert.items():
        if label.startswith("batch_inference"):
            ratio = row["requests_per_s"] / fair["requests_per_s"]
            fill = row["mean_batch_size"] / row["max_batch_size"]
            targets.append({"Target": f"{label}: >= 1.3x @serve.batch requests/s",
                            "Measured": f"{ratio:.2f}x", "Met": ratio >= 1.3})
            targets.append({"Target": f"{label}: average batch >= 80% of max",
                            "Measured": f"{fill:.0%}", "Met": fill >= 0.8})
    for row in results["scaling"]:
        if row["label"].startswith("batch_inference"):
            fill = row["mean_batch_size"] / row["max_batch_size"]
            targets.append({"Target": f"accelerator, {row['label']}: average batch >= 80% of max",
                            "Measured": f"{fill:.0%}", "Met": fill >= 0.8})
    lone = results["lone"]
    added_ms = lone["ours_p50_ms"] - lone["ray_handle_p50_ms"]
    targets.append({"Target": "lone request: <= Ray's handle round trip + 0.5 ms",
                    "Measured": f"{lone['ours_p50_ms']:.2f} ms vs {lone['ray_handle_p50_ms']:.2f}"
                                f" ms (+{added_ms:.2f} ms, medians of {lone['pairs']})",
                    "Met": added_ms <= 0.5})
    for target in targets:
        print(f"{'met' if target['Met'] else 'NOT met'}: {target['Target']} ({target['Measured']})")
pd.DataFrame(targets)

# %%
# Throughput and batch size
# -------------------------

fig, (ax_bert, ax_accel) = plt.subplots(1, 2, figsize=(11, 4))
if results:
    for ax, part in ((ax_bert, results["bert"]), (ax_accel, results["scaling"])):
        labels = [r["label"].replace(", ", ",\n") for r in part]
        bars = ax.bar(labels, [r["requests_per_s"] for r in part],
                      color=["#8c8c8c" if "@serve" in r["label"] else "#4c72b0" for r in part])
        for bar, r in zip(bars, part):
            ax.annotate(f"avg batch {r['mean_batch_size']:.1f}",
                        (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.set_ylabel("requests / s (higher is better)")
        ax.tick_params(axis="x", labelsize=7)
        ax.margins(y=0.15)
    ax_bert.set_title(f"BERT ({SETTINGS['model']}), 1 replica, max batch 32")
    ax_accel.set_title("simulated accelerator, 1 and 2 replicas")
else:
    for ax in (ax_bert, ax_accel):
        ax.text(0.5, 0.5, f"Ray rows skipped:\n{WHY_NOT}", ha="center", va="center", wrap=True)
        ax.set_axis_off()
fig.suptitle(f"Ray Serve: @serve.batch (grey) and batch_inference (blue), {MODE} mode, {DEVICE}")
fig.tight_layout()
plt.show()

# %%
# The results are saved as JSON when ``$BATCH_INFERENCE_RESULTS_DIR`` is set
# (the docs build sets it), and nowhere when the script runs on its own.

save_results("ray_serve", {
    "environment": {k: str(v) for k, v in env.items()},
    "mode": MODE,
    "skipped": None if results else WHY_NOT,
    "rows": rows,
    "targets": targets,
    "timings": results["timings"] if results else None,
})
