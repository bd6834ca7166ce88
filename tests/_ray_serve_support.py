"""The Ray Serve checks of tests/test_ray_serve.py, run in one loopback-only namespace.

Run by ``benchmarks.ray_local.run_isolated([__file__], ...)``; prints one JSON
object as its last stdout line. One Ray start for every check (each start
costs seconds): the socket check while a deployment serves, answers by handle
and by HTTP against ``predict_batch`` alone, typed errors, and a replica
killed under load. Every wait is bounded; the cluster is stopped at the end.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from typing import Any

import numpy as np
import torch

from batch_inference import ConcatBatcher
from batch_inference.errors import BatchInferenceError, InvalidRequestError
from batch_inference.ray.serve import call, call_async, deployment
from benchmarks.ray_local import check_sockets, init_ray, interfaces, sockets

HTTP_PORT = 8123
METRICS_PORT = 8124
METRICS_BOUND_S = 60.0
KILL_CALLERS = 64
CALL_TIMEOUT_S = 20.0
ALL_CALLERS_BOUND_S = 45.0
SERVES_AGAIN_BOUND_S = 60.0


class Affine:
    """``predict_batch(x) -> 3x + 1``; a row with a negative first value raises ``ValueError``;
    ``slow`` pauses each batch (so requests are in flight when a replica is killed)."""

    def __init__(self, pause_s: float = 0.0) -> None:
        self.pause_s = pause_s

    def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
        if (x[:, 0] < 0).any():
            raise ValueError(f"negative input {x[:, 0].min().item()!r}")
        if self.pause_s:
            time.sleep(self.pause_s)
        return x * 3 + 1


def replica_actor_names(ray: Any, app: str) -> list[str]:
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["name"].startswith("SERVE_REPLICA") and f"{app}#" in a["name"])


def answers_and_errors(handle: Any) -> dict[str, Any]:
    import httpx

    inputs = [torch.tensor([[float(i), float(i) / 7]]) for i in range(12)]
    alone = [Affine().predict_batch(x) for x in inputs]
    by_handle = [call(handle, x, timeout_s=CALL_TIMEOUT_S) for x in inputs]
    url = f"http://127.0.0.1:{HTTP_PORT}/affine/predict"
    by_http = [httpx.post(url, json={"args": [x.tolist()]}, timeout=CALL_TIMEOUT_S).json()["result"]
               for x in inputs[:4]]
    bad_http = httpx.post(url, json={"args": [[[1.0]], [[2.0]]]}, timeout=CALL_TIMEOUT_S)
    errors = {}
    for label, args in (("wrong argument count", (inputs[0], inputs[0])),
                        ("model raises", (torch.tensor([[-1.0, 0.0]]),))):
        try:
            call(handle, *args, timeout_s=CALL_TIMEOUT_S)
            errors[label] = None
        except Exception as error:  # noqa: BLE001 - reporting what crossed
            errors[label] = {"type": f"{type(error).__module__}.{type(error).__qualname__}",
                             "message": str(error)}
    try:
        handle.predict.remote(inputs[0], inputs[0]).result(timeout_s=CALL_TIMEOUT_S)
        raw = None
    except Exception as error:  # noqa: BLE001
        raw = {"type": type(error).__name__,
               "isinstance InvalidRequestError": isinstance(error, InvalidRequestError)}
    return {
        "handle equal": all(torch.equal(a, b) for a, b in zip(alone, by_handle)),
        "http equal": all(np.allclose(a.numpy(), np.array(b)) for a, b in zip(alone, by_http)),
        "http bad request": [bad_http.status_code, bad_http.json()],
        "errors": errors,
        "raw handle error": raw,
    }


def ray_metrics(handle: Any) -> dict[str, Any]:
    """Scrape Ray's metrics endpoint until it reports the replica's completed requests.

    Ray's agent gathers what workers record every few seconds, so this polls
    (bounded by ``METRICS_BOUND_S``); parsed with prometheus-client's own parser.
    """
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    stats = handle.stats.remote().result(timeout_s=CALL_TIMEOUT_S)
    wanted = stats.completed
    deadline_s = time.monotonic() + METRICS_BOUND_S
    families: dict[str, Any] = {}
    completed = None
    while time.monotonic() < deadline_s:
        text = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5.0).text
        families = {f.name: f for f in text_string_to_metric_families(text)
                    if f.name.startswith("ray_batch_inference_")}
        requests = families.get("ray_batch_inference_requests")
        if requests is not None:
            completed = sum(s.value for s in requests.samples
                            if s.labels.get("outcome") == "completed"
                            and s.labels.get("host") == "Affine")
            if completed >= wanted:
                break
        time.sleep(0.5)
    sizes = families.get("ray_batch_inference_batch_size")
    return {
        "completed by stats": wanted,
        "completed by Ray": completed,
        "batches by stats": stats.batches,
        "batches by Ray": None if sizes is None else sum(
            s.value for s in sizes.samples if s.name.endswith("_count")),
        "families": {name: f.type for name, f in sorted(families.items())},
        "labels": sorted({key for f in families.values() for s in f.samples for key in s.labels}),
    }


async def kill_under_load(ray: Any, handle: Any) -> dict[str, Any]:
    """``KILL_CALLERS`` callers at once; the replica is killed once its first batch runs."""
    x = torch.tensor([[1.0, 2.0]])

    async def one() -> str:
        try:
            result = await call_async(handle, x, timeout_s=CALL_TIMEOUT_S)
            return "result" if torch.equal(result, x * 3 + 1) else "wrong result"
        except BatchInferenceError as error:
            return type(error).__name__
        except Exception as error:  # noqa: BLE001 - an untyped error is a finding
            return f"untyped {type(error).__name__}"

    names = replica_actor_names(ray, "affine")
    callers = [asyncio.ensure_future(one()) for _ in range(KILL_CALLERS)]
    # Kill once the first caller is answered: its batch has run, the next ones are in flight
    # (asking the replica itself would queue behind the load).
    await asyncio.wait(callers, timeout=CALL_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
    answered_before_kill = sum(c.done() for c in callers)
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    killed_s = time.monotonic()
    done, pending = await asyncio.wait(callers, timeout=ALL_CALLERS_BOUND_S)
    outcomes: dict[str, int] = {}
    for task in done:
        outcomes[task.result()] = outcomes.get(task.result(), 0) + 1
    for task in pending:
        task.cancel()
    all_answered_s = time.monotonic() - killed_s
    served_again_s = None
    while time.monotonic() - killed_s < SERVES_AGAIN_BOUND_S:
        try:
            await call_async(handle, x, timeout_s=5.0)
            served_again_s = time.monotonic() - killed_s
            break
        except BatchInferenceError:
            await asyncio.sleep(0.5)
    return {"callers": KILL_CALLERS, "outcomes": outcomes, "hung": len(pending),
            "all answered within s": round(all_answered_s, 2), "bound s": ALL_CALLERS_BOUND_S,
            "answered before the kill": answered_before_kill, "killed": names[0],
            "replicas after": replica_actor_names(ray, "affine"),
            "served again after s": None if served_again_s is None else round(served_again_s, 2)}


def main() -> None:
    report: dict[str, Any] = {"interfaces": interfaces()}
    ray = init_ray(num_cpus=2, _metrics_export_port=METRICS_PORT)
    from ray import serve

    try:
        serve.start(http_options={"host": "127.0.0.1", "port": HTTP_PORT})
        app = deployment(Affine, batcher=ConcatBatcher(), max_batch_size=8, num_replicas=1,
                         deployment_options={"health_check_period_s": 1.0},
                         metrics_interval_s=0.5)
        handle = serve.run(app.bind(0.1), name="affine", route_prefix="/affine")
        report.update(answers_and_errors(handle))
        report["ray metrics"] = ray_metrics(handle)
        listening = sorted({s["local"] for s in sockets() if s["state"] == "LISTEN"})
        report["sockets"] = {"problems": check_sockets(), "count": len(sockets()),
                             "listening": listening}
        report["kill"] = asyncio.run(kill_under_load(ray, handle))
    finally:
        done = threading.Event()
        threading.Thread(target=lambda: (serve.shutdown(), done.set()), daemon=True).start()
        done.wait(30)
        ray.shutdown()
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    sys.exit(main())
