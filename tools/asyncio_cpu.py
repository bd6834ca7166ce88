"""CPU per asyncio request: the event loop thread's, and the whole process's.

Prints one JSON line for whatever ``batch_inference`` is first on ``sys.path``:
``PYTHONPATH=<tree> python tools/asyncio_cpu.py``. The workload is
``tools/bench_core.py``'s asyncio one (a model that does nothing, 1,000 tasks,
50,000 ``predict_async`` calls after a warm-up of 5,000). CPU time moves far
less than requests/s on a shared machine, so two trees compare on it
alternately, a few rounds each.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))  # benchmarks/, after the tree measured

from batch_inference import ModelHost
from batch_inference.batcher.concat_batcher import ConcatBatcher
from benchmarks._accelerator_harness import NoOpModel

CALLS, TASKS = 50_000, 1000


async def run(host: ModelHost, calls: int, x: torch.Tensor) -> float:
    async def task() -> None:
        for _ in range(calls // TASKS):
            await host.predict_async(x)

    started = time.perf_counter()
    await asyncio.gather(*(task() for _ in range(TASKS)))
    return calls / (time.perf_counter() - started)


def main() -> None:
    import batch_inference

    torch.set_num_threads(2)
    x = torch.ones(1, 4)
    with ModelHost(model_obj=NoOpModel(), batcher=ConcatBatcher(tensor="pt")) as host:
        asyncio.run(run(host, 5000, x))
        before, loop_before = resource.getrusage(resource.RUSAGE_SELF), time.thread_time()
        rate = asyncio.run(run(host, CALLS, x))
        after, loop_after = resource.getrusage(resource.RUSAGE_SELF), time.thread_time()
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(json.dumps({
        "package": os.path.dirname(batch_inference.__file__),
        "calls_per_s": round(rate),
        "process_cpu_us_per_call": round(cpu_s / CALLS * 1e6, 2),
        "loop_thread_cpu_us_per_call": round((loop_after - loop_before) / CALLS * 1e6, 2),
    }))


if __name__ == "__main__":
    main()
