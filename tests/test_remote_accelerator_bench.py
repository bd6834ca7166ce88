"""benchmarks.accelerator and its harness: bounded loads, rows, the 1.0 subprocess."""

from __future__ import annotations

import asyncio
import os
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import _accelerator_harness as harness
from benchmarks.accelerator import (
    V1_PATH_VARIABLE,
    LoadSize,
    capacity_requests_per_s,
    executor_rates,
    remote_lone_caller,
    remote_processes_row,
    tasks_row,
    threads_row,
    v1_path,
    v1_threads_row,
)

TINY = LoadSize(rounds=2, round_s=0.1, warmup_s=0.05)


def test_capacity_is_full_batches_back_to_back() -> None:
    assert capacity_requests_per_s(64, 0.5e-3, 20e-6) == pytest.approx(64 / 1.78e-3)
    assert capacity_requests_per_s(1, 1.0, 0.0) == 1.0


def test_the_simulated_accelerator_returns_its_input() -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    assert harness.SimulatedAccelerator(0.0, 0.0).predict_batch(x) is x


def test_thread_load_counts_rounds_and_stops_by_itself() -> None:
    calls = []
    result = harness.thread_load(calls.append, 3, rounds=2, round_s=0.05, warmup_s=0.01)
    assert 1 <= len(result["rounds"]) <= 2 and result["requests_per_s"] > 0
    assert len(calls) > 0 and all(c is harness.ROW for c in calls[:10])


def test_thread_load_stops_at_max_requests() -> None:
    result = harness.thread_load(lambda x: x, 2, rounds=1000, round_s=0.01, warmup_s=0.0,
                                 max_requests=50)
    assert len(result["rounds"]) < 1000


def test_thread_load_reraises_a_callers_error() -> None:
    def broken(x: object) -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        harness.thread_load(broken, 2, rounds=2, round_s=0.05, warmup_s=0.01)


def test_task_load_counts_awaited_calls() -> None:
    async def predict(x: object) -> object:
        await asyncio.sleep(0)
        return x

    result = harness.task_load(predict, 10, rounds=2, round_s=0.05, warmup_s=0.01)
    assert result["requests_per_s"] > 0 and 1 <= len(result["rounds"]) <= 2


def test_local_rows_measure_the_host() -> None:
    for row in (threads_row(4, TINY), tasks_row(8, TINY)):
        assert row.requests_per_s > 0
        assert row.fraction_of_capacity == pytest.approx(
            row.requests_per_s / capacity_requests_per_s())
    assert threads_row(4, TINY).label == "4 threads, host.predict"


def test_the_v1_row_is_skipped_without_its_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(V1_PATH_VARIABLE, raising=False)
    assert v1_threads_row(4, TINY) is None


def test_a_folder_without_the_v1_package_skips_its_rows_and_says_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(V1_PATH_VARIABLE, str(tmp_path))
    path, why = v1_path()
    assert path is None and "holds no batch_inference package" in why and str(tmp_path) in why
    assert v1_threads_row(4, TINY) is None
    assert list(executor_rates(workers=2, calls=20, rounds=1)) == ["batch_inference (this)"]


def test_the_v1_row_runs_the_same_harness_on_the_other_package(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in "1.0" (a host that calls the model directly) proves the subprocess path."""
    package = tmp_path / "batch_inference"
    (package / "batcher").mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent('''
        __version__ = "0.0-standin"

        class ModelHost:
            def __init__(self, model_obj, batcher, max_batch_size, wait_ms, wait_n):
                self.model = model_obj

            def start(self):
                pass

            def stop(self):
                pass

            def predict(self, x):
                return self.model.predict_batch(x)
    '''))
    (package / "batcher" / "__init__.py").write_text("")
    (package / "batcher" / "concat_batcher.py").write_text("class ConcatBatcher:\n    pass\n")
    monkeypatch.setenv(V1_PATH_VARIABLE, str(tmp_path))
    row = v1_threads_row(2, TINY)
    assert row is not None and row.label == "2 threads, batch-inference 0.0-standin"
    assert row.requests_per_s > 0
    rates = executor_rates(workers=2, calls=50, rounds=2)
    assert list(rates) == ["batch_inference (this)", "batch-inference 0.0-standin"]
    assert all(r["requests_per_s"] > 0 and len(r["rounds"]) == 2 for r in rates.values())


@pytest.mark.slow
def test_the_remote_row_serves_client_processes(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_INFERENCE_RUNTIME_DIR", str(tmp_path / "rt"))
    row = remote_processes_row(1, 2, TINY, port=30000 + os.getpid() % 10000)
    assert row.requests_per_s > 0 and len(row.rounds) >= 1
    assert row.label == "1 processes x 2 threads, RemoteModelHost"
    lone = remote_lone_caller(calls=20, port=30000 + os.getpid() % 10000)
    assert lone["remote_s"] > 0 and lone["local_s"] > 0
    assert lone["added_s"] == pytest.approx(lone["remote_s"] - lone["local_s"])


def test_the_executor_load_reports_calls_that_are_never_answered() -> None:
    import threading

    from benchmarks import _accelerator_harness as harness

    never = threading.Event()
    calls = [0]
    lock = threading.Lock()

    def sometimes_hangs(x: Any) -> Any:
        with lock:
            calls[0] += 1
            hang = calls[0] == 3
        if hang:
            never.wait(30)  # released below, so the pool's thread ends
        return x

    try:
        result = harness.executor_load(sometimes_hangs, workers=2, calls=20, rounds=1,
                                       timeout_s=0.5)
    finally:
        never.set()
    assert result["requests_per_s"] is None and result["hung"] >= 1
    fine = harness.executor_load(lambda x: x, workers=2, calls=20, rounds=2, timeout_s=30)
    assert fine["hung"] == 0 and len(fine["rounds"]) == 2 and fine["requests_per_s"] > 0
