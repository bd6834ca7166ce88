"""The simulated accelerator and its closed-loop load, with no import of this package.

It depends on the standard library and NumPy only, so the very same harness
also measures another library that installs under the name
``batch_inference`` (batch-inference 1.0), run as a script in a subprocess
whose ``PYTHONPATH`` points at it::

    python -c "import runpy; runpy.run_path('<this file>', run_name='__main__')" '<json>'

The script builds ``batch_inference.ModelHost`` (whatever package that name
resolves to) with ``batch_inference.batcher.concat_batcher.ConcatBatcher``, runs
:func:`thread_load` (or, with ``"load": "executor"``, :func:`executor_load` over
:class:`NoOpModel`) and prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

BASE_S = 0.5e-3
PER_ROW_S = 20e-6
ROW = np.ones((1, 4), dtype=np.float32)


class SimulatedAccelerator:
    """``predict_batch(x) -> x`` that sleeps ``base_s + per_row_s * rows``.

    ``time.sleep`` releases the GIL, as a CUDA model does while it waits for
    the device, so the host's own work overlaps the "device" time.
    """

    def __init__(self, base_s: float = BASE_S, per_row_s: float = PER_ROW_S) -> None:
        self.base_s = base_s
        self.per_row_s = per_row_s

    def predict_batch(self, x: np.ndarray) -> np.ndarray:
        time.sleep(self.base_s + self.per_row_s * len(x))
        return x


def _rates(counts: Callable[[], int], stop: threading.Event, rounds: int, round_s: float,
           warmup_s: float, max_requests: int) -> dict[str, Any]:
    """Sample ``counts()`` at round boundaries after a warm-up; every wait is bounded."""
    stop.wait(warmup_s)
    rates: list[float] = []
    start_count, start_s = counts(), time.monotonic()
    for _ in range(rounds):
        if stop.wait(round_s) or counts() - start_count > max_requests:
            break
        now_count, now_s = counts(), time.monotonic()
        rates.append((now_count - start_count) / (now_s - start_s))
        start_count, start_s = now_count, now_s
    stop.set()
    return {"requests_per_s": statistics.median(rates) if rates else 0.0,
            "rounds": rates}


def thread_load(predict: Callable[..., Any], n_threads: int, rounds: int = 3,
                round_s: float = 1.0, warmup_s: float = 0.5,
                max_requests: int = 2_000_000) -> dict[str, Any]:
    """``n_threads`` threads each call ``predict(ROW)`` back to back; median rate of the rounds.

    Stops by itself after ``warmup_s + rounds * round_s`` seconds or once
    ``max_requests`` were counted, whichever comes first.
    """
    counts = [0] * n_threads
    stop = threading.Event()
    errors: list[BaseException] = []

    def caller(slot: int) -> None:
        try:
            while not stop.is_set():
                predict(ROW)
                counts[slot] += 1
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
            stop.set()

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(n_threads)]
    for thread in threads:
        thread.start()
    result = _rates(lambda: sum(counts), stop, rounds, round_s, warmup_s, max_requests)
    for thread in threads:
        thread.join(30.0)
    if errors:
        raise errors[0]
    return result


def task_load(predict_async: Callable[..., Awaitable[Any]], n_tasks: int, rounds: int = 3,
              round_s: float = 1.0, warmup_s: float = 0.5,
              max_requests: int = 2_000_000) -> dict[str, Any]:
    """:func:`thread_load` for asyncio: ``n_tasks`` tasks on one event loop (its own thread)."""
    counts = [0]
    stop = threading.Event()
    result: dict[str, Any] = {}

    async def caller() -> None:
        while not stop.is_set():
            await predict_async(ROW)
            counts[0] += 1

    async def main() -> None:
        loop = asyncio.get_running_loop()
        tasks = [asyncio.ensure_future(caller()) for _ in range(n_tasks)]
        result.update(await loop.run_in_executor(None, lambda: _rates(
            lambda: counts[0], stop, rounds, round_s, warmup_s, max_requests)))
        await asyncio.wait_for(asyncio.gather(*tasks), 30.0)

    asyncio.run(main())
    return result


class NoOpModel:
    """``predict_batch(x) -> x``: the model that does nothing.

    What remains is the host's own cost, with no model time to hide it. The one
    such model of the benchmarks (overhead, accelerator, ``tools/bench_core.py``);
    defined here because this module imports nothing of the package.
    """

    def predict_batch(self, x: Any) -> Any:
        return x


def executor_load(predict: Callable[..., Any], workers: int = 64, calls: int = 20_000,
                  rounds: int = 3, timeout_s: float = 60.0) -> dict[str, Any]:
    """``calls`` calls of ``predict(ROW)`` submitted to a ``ThreadPoolExecutor(workers)``.

    A warm-up of a tenth of ``calls`` first; then ``rounds`` timed rounds, each its
    own pool; the median rate. A round whose calls are not all answered within
    ``timeout_s`` ends the load: ``"hung"`` then counts the calls still waiting
    (batch-inference 1.0 waits on a condition without a predicate, so a call
    answered before it waits is never woken) and ``requests_per_s`` is ``None``.
    """
    from concurrent.futures import ThreadPoolExecutor, wait

    def one_round(n: int) -> tuple[float, int]:
        pool = ThreadPoolExecutor(workers)
        start = time.perf_counter()
        futures = [pool.submit(predict, ROW) for _ in range(n)]
        done, pending = wait(futures, timeout=timeout_s)
        elapsed_s = time.perf_counter() - start
        pool.shutdown(wait=not pending, cancel_futures=True)
        for future in done:
            future.result()  # a call that raised fails the load
        return n / elapsed_s, len(pending)

    rates: list[float] = []
    for n in [max(1, calls // 10)] + [calls] * rounds:
        rate, hung = one_round(n)
        if hung:
            return {"requests_per_s": None, "rounds": rates, "hung": hung}
        rates.append(rate)
    rates = rates[1:]  # the warm-up
    return {"requests_per_s": statistics.median(rates), "rounds": rates, "hung": 0}


def release_together(children: list[subprocess.Popen[str]], timeout_s: float) -> list[str]:
    """Wait until every client process says ``ready``, send them all ``go``, return their outputs.

    Each child prints ``ready`` once connected and warmed up, waits for ``go`` on
    its stdin, runs, and prints its result. A child that is still running at the
    end (an error, or past ``timeout_s``) is killed.
    """
    try:
        for child in children:
            assert child.stdout is not None
            line = child.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"a client process failed to start (said {line!r})")
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        return [child.communicate(timeout=timeout_s)[0] for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(10)


def _main(config: dict[str, Any]) -> None:
    import batch_inference
    from batch_inference.batcher.concat_batcher import ConcatBatcher

    executor = config.get("load") == "executor"
    host = batch_inference.ModelHost(
        model_obj=NoOpModel() if executor else SimulatedAccelerator(), batcher=ConcatBatcher(),
        max_batch_size=config["max_batch_size"], wait_ms=0, wait_n=config["max_batch_size"],
    )
    host.start()
    try:
        if executor:
            result = executor_load(host.predict, config["workers"], config["calls"],
                                   config["rounds"])
        else:
            result = thread_load(host.predict, config["threads"], config["rounds"],
                                 config["round_s"], config["warmup_s"])
    finally:
        host.stop()
    result["library"] = getattr(batch_inference, "__version__", "?")
    print(json.dumps(result), flush=True)
    if result.get("hung"):
        os._exit(0)  # the hung callers' threads would keep the interpreter from exiting


if __name__ == "__main__":
    _main(json.loads(sys.argv[1]))
