"""Feeding a simulated accelerator: threads, asyncio tasks, client processes, and 1.0.

The model (:class:`~benchmarks._accelerator_harness.SimulatedAccelerator`)
sleeps ``0.5 ms + 20 us`` per row and releases the GIL meanwhile, like a CUDA
model waiting for its device. With ``ConcatBatcher`` and ``max_batch_size=64``
it could serve :func:`capacity_requests_per_s` requests/s (about 36,000): each
row below is a fraction of that. Every load is a closed loop bounded in time
and count (:mod:`~benchmarks._accelerator_harness`); the rate is
the median of its rounds, after a warm-up.

Run as ``python -m benchmarks.accelerator client '<json>'`` it
is one client process of :func:`remote_processes_row` (started by it).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batch_inference.batcher.concat_batcher import ConcatBatcher
from batch_inference.errors import ConfigurationError
from batch_inference.host import ModelHost

from . import _accelerator_harness as harness

__all__ = [
    "AcceleratorRow",
    "LoadSize",
    "V1_PATH_VARIABLE",
    "capacity_requests_per_s",
    "threads_row",
    "tasks_row",
    "remote_processes_row",
    "remote_lone_caller",
    "executor_rates",
    "v1_path",
    "v1_threads_row",
]

MAX_BATCH_SIZE = 64
#: Environment variable naming an unpacked batch-inference 1.0 (the folder holding its package).
V1_PATH_VARIABLE = "BATCH_INFERENCE_V1_PATH"
_CHILD_TIMEOUT_S = 120.0
#: Holds ``benchmarks`` and the ``batch_inference`` beside it; child processes import both.
_REPOSITORY_ROOT = str(Path(__file__).resolve().parents[1])


@dataclass(frozen=True)
class LoadSize:
    """How long each load runs: ``warmup_s``, then ``rounds`` rounds of ``round_s``."""

    rounds: int = 3
    round_s: float = 1.0
    warmup_s: float = 0.5

    def as_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "round_s": self.round_s, "warmup_s": self.warmup_s}


@dataclass(frozen=True)
class AcceleratorRow:
    """One way of feeding the accelerator, measured."""

    label: str
    requests_per_s: float
    capacity_requests_per_s: float
    rounds: tuple[float, ...] = ()

    @property
    def fraction_of_capacity(self) -> float:
        return self.requests_per_s / self.capacity_requests_per_s


def capacity_requests_per_s(max_batch_size: int = MAX_BATCH_SIZE, base_s: float = harness.BASE_S,
                            per_row_s: float = harness.PER_ROW_S) -> float:
    """Requests/s of the accelerator kept busy with full batches: ``n / (base + n * per_row)``."""
    return max_batch_size / (base_s + max_batch_size * per_row_s)


def _host() -> ModelHost:
    return ModelHost(model_obj=harness.SimulatedAccelerator(), batcher=ConcatBatcher(),
                     max_batch_size=MAX_BATCH_SIZE)


def _row(label: str, result: dict[str, Any]) -> AcceleratorRow:
    return AcceleratorRow(label, float(result["requests_per_s"]), capacity_requests_per_s(),
                          tuple(result.get("rounds", ())))


def threads_row(n_threads: int = 256, size: LoadSize = LoadSize()) -> AcceleratorRow:
    """``n_threads`` threads of this process call ``host.predict``."""
    with _host() as host:
        result = harness.thread_load(host.predict, n_threads, **size.as_dict())
    return _row(f"{n_threads} threads, host.predict", result)


def tasks_row(n_tasks: int = 1024, size: LoadSize = LoadSize()) -> AcceleratorRow:
    """``n_tasks`` asyncio tasks of this process await ``host.predict_async``."""
    with _host() as host:
        result = harness.task_load(host.predict_async, n_tasks, **size.as_dict())
    return _row(f"{n_tasks} asyncio tasks, predict_async", result)


def _child_env(extra_path: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    first = extra_path or _REPOSITORY_ROOT
    env["PYTHONPATH"] = os.pathsep.join(p for p in (first, env.get("PYTHONPATH")) if p)
    return env


def _serve_children(model_cls: type, port: int | None, configs: list[dict[str, Any]]
                    ) -> list[dict[str, Any]]:
    """Serve ``model_cls`` here while one client process per config runs; their JSON results.

    The clients start, connect and say ``ready``; then all get ``go`` at once.
    """
    from batch_inference.remote import RemoteModelHost

    port = port if port is not None else 47000 + os.getpid() % 2000
    server = RemoteModelHost(model_cls, port, ConcatBatcher(), MAX_BATCH_SIZE, wait_ms=0,
                             wait_n=MAX_BATCH_SIZE)
    with server:
        if not server.is_server:
            raise ConfigurationError(f"port {port} is already served by another process")
        children = [subprocess.Popen(
            [sys.executable, "-m", "benchmarks.accelerator", "client",
             json.dumps({"port": port, **config})],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_child_env(),
        ) for config in configs]
        return [json.loads(output)
                for output in harness.release_together(children, _CHILD_TIMEOUT_S)]


def remote_lone_caller(calls: int = 2_000, port: int | None = None) -> dict[str, float]:
    """What a lone caller in another process pays through RemoteModelHost, over a local host.

    One client process calls, alternately, a local ``ModelHost`` of its own and
    the ``RemoteModelHost`` served here (both with a model that does nothing);
    returns the medians ``local_s``, ``remote_s`` and their difference ``added_s``.
    """
    (result,) = _serve_children(harness.NoOpModel, port, [{"mode": "lone", "calls": calls}])
    return {key: float(result[key]) for key in ("local_s", "remote_s", "added_s")}


def remote_processes_row(n_processes: int = 4, threads_per_process: int = 64,
                         size: LoadSize = LoadSize(), port: int | None = None) -> AcceleratorRow:
    """``n_processes`` client processes x ``threads_per_process`` threads via RemoteModelHost.

    This process serves (it must win the port's election); the clients start,
    connect and warm up, then all run their rounds at once. The row's rate is
    the sum of the clients' median rates.
    """
    config = {"mode": "load", "threads": threads_per_process, **size.as_dict()}
    results = _serve_children(harness.SimulatedAccelerator, port, [config] * n_processes)
    total = sum(r["requests_per_s"] for r in results)
    rounds = tuple(sum(r) for r in zip(*(r["rounds"] for r in results)))
    return AcceleratorRow(f"{n_processes} processes x {threads_per_process} threads, "
                          "RemoteModelHost", total, capacity_requests_per_s(), rounds)


def v1_path() -> tuple[str | None, str]:
    """The folder of batch-inference 1.0 to compare with, or ``None`` and why there is none.

    ``$BATCH_INFERENCE_V1_PATH`` names the folder that holds 1.0's
    ``batch_inference`` package (e.g. an unpacked wheel: ``tox -e docs`` fetches
    one with ``tools/fetch_v1.py``).
    """
    path = os.environ.get(V1_PATH_VARIABLE, "").strip()
    if not path:
        return None, f"{V1_PATH_VARIABLE} is not set"
    if not (Path(path) / "batch_inference" / "__init__.py").is_file():
        return None, f"{V1_PATH_VARIABLE}={path!r} holds no batch_inference package"
    return path, ""


def _run_harness(config: dict[str, Any], package_root: str) -> dict[str, Any]:
    """Run the harness in a fresh process whose ``batch_inference`` is under ``package_root``."""
    code = f"import runpy; runpy.run_path({str(Path(harness.__file__))!r}, run_name='__main__')"
    done = subprocess.run([sys.executable, "-c", code, json.dumps(config)], capture_output=True,
                          text=True, env=_child_env(package_root), timeout=_CHILD_TIMEOUT_S,
                          cwd=package_root, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the harness failed under {package_root}: "
                           f"{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def v1_threads_row(n_threads: int = 256, size: LoadSize = LoadSize()) -> AcceleratorRow | None:
    """The threads row for batch-inference 1.0, in a subprocess; ``None`` without 1.0
    (see :func:`v1_path`)."""
    path, _ = v1_path()
    if path is None:
        return None
    result = _run_harness({"threads": n_threads, "max_batch_size": MAX_BATCH_SIZE,
                           **size.as_dict()}, path)
    return _row(f"{n_threads} threads, batch-inference {result['library']}", result)


def executor_rates(workers: int = 64, calls: int = 20_000, rounds: int = 3
                   ) -> dict[str, dict[str, Any]]:
    """A model that does nothing, ``calls`` calls from a ``ThreadPoolExecutor(workers)``.

    The host's own cost per request, with no model time to hide it. Each
    library runs in a fresh process of its own (this package, and 1.0 where
    :func:`v1_path` finds it), one after the other. Returns ``{library:
    {"requests_per_s", "rounds"}}``.
    """
    config = {"load": "executor", "workers": workers, "calls": calls, "rounds": rounds,
              "max_batch_size": MAX_BATCH_SIZE}
    rates = {"batch_inference (this)": _run_harness(config, _REPOSITORY_ROOT)}
    path, _ = v1_path()
    if path is not None:
        result = _run_harness(config, path)
        rates[f"batch-inference {result['library']}"] = result
    return rates


def _client(config: dict[str, Any]) -> None:
    """One client process: connect, say ``ready``, wait for ``go``, run, print JSON."""
    from batch_inference.remote import RemoteModelHost

    host = RemoteModelHost(harness.SimulatedAccelerator, config["port"], ConcatBatcher(),
                           MAX_BATCH_SIZE, connect_timeout_s=60.0).start()
    try:
        host.predict(harness.ROW, timeout=60.0)
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            return
        if config["mode"] == "lone":
            result = _lone(host.predict, config["calls"])
        else:
            result = harness.thread_load(host.predict, config["threads"], config["rounds"],
                                         config["round_s"], config["warmup_s"])
        print(json.dumps(result), flush=True)
    finally:
        host.stop(timeout=10)


def _lone(remote_predict: Any, calls: int) -> dict[str, float]:
    """Alternate a local host and the remote one, one call at a time; medians after a warm-up."""
    local_s: list[float] = []
    remote_s: list[float] = []
    with ModelHost(model_obj=harness.NoOpModel(), batcher=ConcatBatcher(),
                   max_batch_size=MAX_BATCH_SIZE) as local:
        for i in range(calls + calls // 10):
            start = time.perf_counter()
            local.predict(harness.ROW)
            middle = time.perf_counter()
            remote_predict(harness.ROW)
            end = time.perf_counter()
            if i >= calls // 10:  # the first tenth warms up
                local_s.append(middle - start)
                remote_s.append(end - middle)
    local_median, remote_median = statistics.median(local_s), statistics.median(remote_s)
    return {"local_s": local_median, "remote_s": remote_median,
            "added_s": remote_median - local_median}


if __name__ == "__main__":
    if sys.argv[1:2] != ["client"] or len(sys.argv) != 3:
        raise SystemExit("usage: python -m benchmarks.accelerator client '<json>'")
    _client(json.loads(sys.argv[2]))
