"""The Ray Serve page's measurements: run as ``python -m benchmarks.ray_serve_bench '<json>'``.

Only ever through :func:`benchmarks.ray_local.run_isolated` (a loopback-only
network namespace). Starts a local Ray cluster and Serve (no HTTP proxy), and:

1. **BERT**: the same model (MiniLM in quick mode) behind Ray's
   ``@serve.batch`` (``max_ongoing_requests`` raised to the library's value,
   so that Serve's default of 5 does not cap its batches) and behind the
   library's deployment with ``BucketSeqBatcher`` and with
   ``LengthAwareBatcher``, one replica each, ``max_batch_size`` 32, the
   ``BucketSeqBatcher``'s ``max_delay_s`` equal to ``@serve.batch``'s
   ``batch_wait_timeout_s`` (``LengthAwareBatcher`` keeps ``0``: its
   ``max_delay_s`` is when a waiting request becomes due whatever its length,
   and a short one forces badly padded batches); the same queries, rounds
   interleaved; the answers of the first ``checked`` queries are compared
   with the model run on each alone, here.
2. **A lone request**: Ray's own handle round trip (``Echo``) against the
   library's deployment of a model that returns its input, interleaved.
3. **Replica scaling**: the simulated accelerator (slowed, see
   :data:`ACCELERATOR`) behind ``@serve.batch`` and behind the library's
   deployment, on 1 replica, then scaled in place to 2.

Prints one JSON object (the last line of stdout). Every load is bounded in
count and time; Serve and Ray are shut down at the end.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from typing import Any

import numpy as np

#: The simulated accelerator of the accelerator page, slowed so that on a small CPU the
#: device, not Serve's own work per request, is the limit: a batch of 32 takes 214 ms
#: (at most 150 requests/s a replica; Serve's own work on 2 cores passes about 400/s).
ACCELERATOR = {"base_s": 0.15, "per_row_s": 0.002}
ROUND_LIMIT_S = 30.0


_STARTED_S = time.monotonic()


def _log(message: str) -> None:
    """A progress line on stderr (the page shows stderr only when the run fails)."""
    print(f"[{time.monotonic() - _STARTED_S:6.1f} s] {message}", file=sys.stderr, flush=True)


def _percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1e3) if values else float("nan")


def _error(output: Any, reference: Any) -> float:
    """Largest absolute difference; infinite when the shapes differ (an untrimmed answer)."""
    if tuple(output.shape) != tuple(reference.shape):
        return float("inf")
    return float((output - reference).abs().max())


async def _bert(serve: Any, settings: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    from batch_inference import BucketSeqBatcher
    from batch_inference.batcher.length_aware_batcher import LengthAwareBatcher
    from batch_inference.ray.serve import call_async, deployment
    from benchmarks.bert import (
        BertEmbedding,
        load_bert,
        make_queries,
        random_lengths,
    )
    from benchmarks.ray_serve_apps import (
        BATCH_WAIT_S,
        MAX_BATCH_SIZE,
        MiniLMEmbedding,
        ServeBatchEmbedder,
        serve_batch_deployment,
    )
    from benchmarks.ray_serve_load import closed_loop, figures_between, replica_figures

    model, device = settings["model"], settings.get("device", "cpu")
    # Four BERT replicas share one GPU in full mode: Ray hides GPUs from actors that ask none.
    actor = {"num_gpus": 0.2} if device.startswith("cuda") else {}
    alone = load_bert(model, device)  # the model alone, in this process: the reference answers
    lengths = random_lengths(settings["queries"], 4, 100, seed=0)
    queries = make_queries(lengths, alone.vocab_size, seed=0)
    # The first `checked` queries, run alone: every answer they get, in every round and
    # every row, is compared with these.
    references = [BertEmbedding(alone.model, device).predict_batch(*query)
                  for query in queries[: settings["checked"]]]
    weights = alone.weights
    ours = {"max_batch_size": MAX_BATCH_SIZE, "ray_actor_options": actor}
    apps = {
        f"@serve.batch, max_ongoing_requests {2 * MAX_BATCH_SIZE}":
            ("serve", serve_batch_deployment(ServeBatchEmbedder, "sb", 2 * MAX_BATCH_SIZE, 1,
                                             actor).bind(model, device)),
        "batch_inference, BucketSeqBatcher": ("ours", deployment(
            MiniLMEmbedding, name="bucket", batcher=BucketSeqBatcher(
                padding_tokens=[0, 0], buckets=[16, 32, 64], tensor="pt"),
            max_delay_s=BATCH_WAIT_S, **ours)
            .bind(model, device)),
        "batch_inference, LengthAwareBatcher": ("ours", deployment(
            MiniLMEmbedding, name="aware", batcher=LengthAwareBatcher(
                padding_tokens=[0, 0], tensor="pt"), **ours).bind(model, device)),
    }
    _log("BERT: references computed; deploying")
    handles = _run_all(serve, {label: app for label, (_, app) in apps.items()})
    _log("BERT: deployed")

    def sender(label: str) -> Any:
        handle = handles[label]
        if apps[label][0] == "ours":
            return lambda query: call_async(handle, *query)
        return lambda query: handle.remote(*query)

    def asker(label: str) -> Any:
        handle = handles[label]
        method = handle.replica_stats if apps[label][0] == "ours" else handle.figures
        return lambda: method.remote()

    warmup = queries[: settings["warmup"]]
    for label in apps:
        await closed_loop(sender(label), warmup, settings["clients"], ROUND_LIMIT_S)
    _log("BERT: warmed up")
    before = {label: await replica_figures(asker(label), 1) for label in apps}
    loads: dict[str, list[Any]] = {label: [] for label in apps}
    for round_index in range(settings["rounds"]):
        for label in apps:
            loads[label].append(await closed_loop(sender(label), queries, settings["clients"],
                                                  settings["round_limit_s"]))
        _log(f"BERT: round {round_index + 1} done")
    rows = []
    for label in apps:
        after = await replica_figures(asker(label), 1)
        latencies = [s for load in loads[label] for s in load.latencies_s]
        rows.append({
            "label": label, "replicas": 1, "max_batch_size": MAX_BATCH_SIZE,
            "requests_per_s": statistics.median(load.requests_per_s for load in loads[label]),
            "p50_ms": _percentile_ms(latencies, 50), "p99_ms": _percentile_ms(latencies, 99),
            **figures_between(before[label], after),
            "errors": [e for load in loads[label] for e in load.errors][:5],
            "answered": sum(load.answered for load in loads[label]),
            "max_error": max((_error(o, ref) for load in loads[label]
                              for o, ref in zip(load.outputs, references) if o is not None),
                             default=float("nan")),
        })
    for index in range(len(apps)):
        serve.delete(f"app{index}")
    return rows, weights


def _lone(handles: dict[str, Any], count: int) -> dict[str, Any]:
    import torch

    from batch_inference.ray.serve import call

    x = torch.ones(1, 8)
    echo, ours = handles["echo"], handles["identity"]
    for _ in range(20):  # warm-up
        echo.remote(x).result(timeout_s=10)
        call(ours, x, timeout_s=10)
    ray_s, ours_s = [], []
    deadline_s = time.monotonic() + ROUND_LIMIT_S
    for _ in range(count):
        if time.monotonic() > deadline_s:
            break
        start = time.perf_counter()
        echo.remote(x).result(timeout_s=10)
        ray_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        call(ours, x, timeout_s=10)
        ours_s.append(time.perf_counter() - start)
    return {"pairs": len(ray_s), "ray_handle_p50_ms": statistics.median(ray_s) * 1e3,
            "ours_p50_ms": statistics.median(ours_s) * 1e3}


async def _accelerator(handles: dict[str, Any], apps: dict[str, tuple[str, int]],
                       settings: dict[str, Any]) -> list[dict[str, Any]]:
    from batch_inference.ray.serve import call_async
    from benchmarks.ray_serve_apps import MAX_BATCH_SIZE
    from benchmarks.ray_serve_load import closed_loop, figures_between, replica_figures

    row = np.arange(4, dtype=np.float32).reshape(1, 4)
    items = [row] * settings["accelerator_max_requests"]

    def sender(label: str) -> Any:
        handle = handles[label]
        if apps[label][0] == "ours":
            return lambda x: call_async(handle, x)
        return lambda x: handle.remote(x)

    def asker(label: str) -> Any:
        handle = handles[label]
        method = handle.replica_stats if apps[label][0] == "ours" else handle.figures
        return lambda: method.remote()

    # As many callers as the replicas let in (max_ongoing_requests each): more would wait
    # in Serve's router, which retries a full deployment with backoffs of up to a second.
    clients = {label: settings["accelerator_clients_per_replica"] * apps[label][1]
               for label in apps}
    round_s = settings["accelerator_round_s"]
    for label in apps:
        await closed_loop(sender(label), items, clients[label], settings["accelerator_warmup_s"],
                          False)
    before = {label: await replica_figures(asker(label), apps[label][1]) for label in apps}
    loads: dict[str, list[Any]] = {label: [] for label in apps}
    for _ in range(settings["rounds"]):
        for label in apps:
            loads[label].append(await closed_loop(sender(label), items, clients[label],
                                                  round_s))
    rows = []
    for label in apps:
        after = await replica_figures(asker(label), apps[label][1])
        latencies = [s for load in loads[label] for s in load.latencies_s]
        wrong = sum(1 for load in loads[label] for o in load.outputs
                    if o is not None and not np.array_equal(o, row))
        rows.append({
            "label": label, "replicas": apps[label][1], "max_batch_size": MAX_BATCH_SIZE,
            "clients": clients[label],
            "requests_per_s": statistics.median(load.requests_per_s for load in loads[label]),
            "p50_ms": _percentile_ms(latencies, 50), "p99_ms": _percentile_ms(latencies, 99),
            **figures_between(before[label], after), "wrong_answers": wrong,
            "answered": sum(load.answered for load in loads[label]),
            "errors": [e for load in loads[label] for e in load.errors][:5],
        })
    return rows


def _app_names(apps: dict[str, Any]) -> dict[str, str]:
    return {label: f"app{index}" for index, label in enumerate(apps)}


def _run_all(serve: Any, apps: dict[str, Any], names: dict[str, str] | None = None
             ) -> dict[str, Any]:
    """Deploy every application at once (their replicas start side by side)."""
    names = names or _app_names(apps)
    if hasattr(serve, "run_many"):
        targets = [serve.RunTarget(app, name=names[label], route_prefix=None)
                   for label, app in apps.items()]
        return dict(zip(apps, serve.run_many(targets)))
    return {label: serve.run(app, name=names[label], route_prefix=None)
            for label, app in apps.items()}


def main(settings: dict[str, Any]) -> dict[str, Any]:
    """Run every measurement of the page (see the module docstring); returns the results."""
    from benchmarks.ray_local import check_sockets, init_ray

    started_s = time.monotonic()
    ray = init_ray(num_cpus=16)  # logical CPUs: every replica fits; each runs 1 torch thread
    from ray import serve

    timings = {"ray_init_s": time.monotonic() - started_s}
    results: dict[str, Any] = {"ray_version": ray.__version__, "accelerator": ACCELERATOR}
    try:
        serve.start(proxy_location="Disabled")
        _log("Ray and Serve started")
        results["bert"], results["weights"] = asyncio.run(_bert(serve, settings))
        timings["bert_done_s"] = time.monotonic() - started_s
        results["lone"], results["scaling"] = _second_part(serve, settings)
        results["sockets"] = check_sockets()
    finally:
        serve.shutdown()
        ray.shutdown()
    timings["total_s"] = time.monotonic() - started_s
    results["timings"] = timings
    return results


def _second_part(serve: Any, settings: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    """The lone request, then the accelerator on 1 replica, then on 2 (scaled in place)."""
    from batch_inference import ConcatBatcher
    from batch_inference.ray.serve import deployment
    from benchmarks._accelerator_harness import NoOpModel, SimulatedAccelerator
    from benchmarks.ray_serve_apps import (
        BATCH_WAIT_S,
        MAX_BATCH_SIZE,
        Echo,
        ServeBatchAccelerator,
        serve_batch_deployment,
    )

    scaled = {
        "serve": serve_batch_deployment(ServeBatchAccelerator, "sbacc", 2 * MAX_BATCH_SIZE),
        "ours": deployment(SimulatedAccelerator, name="acc", batcher=ConcatBatcher(),
                           max_batch_size=MAX_BATCH_SIZE, max_delay_s=BATCH_WAIT_S,
                           num_replicas=1),
    }
    label = {"serve": "@serve.batch", "ours": "batch_inference"}
    apps: dict[str, Any] = {
        "echo": serve.deployment(Echo, name="echo").bind(),
        "identity": deployment(NoOpModel, name="identity", batcher=ConcatBatcher(),
                               max_batch_size=MAX_BATCH_SIZE).bind(),
        **{label[kind]: app.bind(**ACCELERATOR) for kind, app in scaled.items()},
    }
    handles = _run_all(serve, apps)
    _log("lone and scaling: deployed")
    lone = _lone(handles, settings["lone"])
    _log("lone: done")
    rows = []
    for replicas in (1, 2):
        if replicas > 1:  # the same deployments, scaled in place: one replica more each
            handles.update(_run_all(serve, {
                label[kind]: app.options(num_replicas=replicas).bind(**ACCELERATOR)
                for kind, app in scaled.items()}, names=_app_names(apps)))
        kinds = {f"{label[kind]}, {replicas} replica{'s' * (replicas > 1)}": (kind, replicas)
                 for kind in scaled}
        by_label = {row_label: handles[label[kind]] for row_label, (kind, _) in kinds.items()}
        rows += asyncio.run(_accelerator(by_label, kinds, settings))
        _log(f"accelerator: {replicas} replica(s) done")
    return lone, rows


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))), flush=True)
