"""How much resident memory ``host.map`` takes over a very long input (a benchmark, not a test).

Maps ``--count`` small requests (default 1,000,000) of a model that does
nothing through ``host.map``, reading them from a generator, and prints the
process's resident memory growth: its peak during the map (sampled every 10 ms)
minus its value after a warm-up map of 10,000 requests. The results are
dropped as they come, as a program writing them out would.

    PYTHONPATH=$PWD python benchmarks/map_memory.py [--count N] [--window W]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

import torch

from batch_inference import ModelHost
from batch_inference.batcher.concat_batcher import ConcatBatcher
from benchmarks._accelerator_harness import NoOpModel
from benchmarks.corpus import MIB, PeakMemory


def requests(count: int) -> Iterator[torch.Tensor]:
    for i in range(count):
        yield torch.full((1, 4), i, dtype=torch.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--window", type=int, default=None)
    parser.add_argument("--max-batch-size", type=int, default=32)
    args = parser.parse_args()
    host = ModelHost(model_obj=NoOpModel(), batcher=ConcatBatcher(tensor="pt"),
                     max_batch_size=args.max_batch_size)
    with host:
        for _ in host.map(requests(10_000), window=args.window):
            pass
        with PeakMemory(interval_s=0.01) as memory:
            started = time.perf_counter()
            done, last = 0, None
            for result in host.map(requests(args.count), window=args.window):
                done, last = done + 1, result
            wall_s = time.perf_counter() - started
        assert done == args.count and last is not None and int(last[0, 0]) == args.count - 1
    print(f"mapped {done:,} requests in {wall_s:.1f} s ({done / wall_s:,.0f} requests/s), "
          f"window={args.window or 16 * args.max_batch_size}")
    print(f"resident memory: {memory.start / MIB:.0f} MiB after the warm-up, "
          f"peak {memory.peak / MIB:.0f} MiB during the map")
    print(f"RSS growth: {memory.growth_mib:.1f} MiB (target: under 200 MiB)")


if __name__ == "__main__":
    main()
