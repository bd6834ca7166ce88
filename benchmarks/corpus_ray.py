"""The corpus page's Ray Data rows: run in a child process inside a loopback-only namespace.

:func:`ray_rows` (in the page's process) runs ``python -m benchmarks.corpus_ray
'<json>'`` through :func:`benchmarks.ray_local.run_isolated`. The child starts a
local Ray cluster (:func:`benchmarks.ray_local.init_ray`: 127.0.0.1, no
dashboard, a small object store), embeds the corpus with Ray Data twice (fixed
batches padded to their longest row, then :class:`~batch_inference.ray.data.BatchedPredictor`),
writes each run's embeddings to a ``.npy`` file (read back with
``allow_pickle=False``: nothing from the child is unpickled) and prints its
figures as one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.corpus import CorpusRow, PeakMemory, PooledMiniLM, all_processes_rss, corpus

#: Most seconds the child may take (Ray's start, two pipelines, its stop).
RAY_TIMEOUT_S = 900.0


def ray_rows(settings: dict[str, Any]) -> tuple[list[CorpusRow], str]:
    """Both Ray Data rows, run in a loopback-only namespace; ``([], reason)`` where it cannot.

    ``settings``: ``count``, ``seed``, ``shortest``, ``longest``, ``vocab_size``,
    ``max_batch_size``, ``blocks``, ``threads``.
    """
    from benchmarks.ray_local import netns_available, run_isolated

    ok, why = netns_available()
    if not ok:
        return [], why
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    with tempfile.TemporaryDirectory(prefix="corpus-ray-") as out_dir:
        argv = ["-m", "benchmarks.corpus_ray", json.dumps({**settings, "out": out_dir})]
        # Ray starts its workers at niceness 15; the rows run here run at 0: the same for both.
        done = run_isolated(argv, RAY_TIMEOUT_S,
                            env={"PYTHONPATH": path, "RAY_worker_niceness": "0"})
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            tail = (done.stderr or done.stdout).strip()[-800:]
            raise RuntimeError(f"the Ray Data child failed (exit {done.returncode}): {tail}")
        report = json.loads(lines[-1])
        rows = [CorpusRow(r["method"], r["queries"], r["wall_s"], r["padding_efficiency"],
                          r["mean_batch_size"], r["memory_mib"],
                          np.load(Path(out_dir) / r["file"], allow_pickle=False), r["total_s"])
                for r in report["rows"]]
    return rows, ""


class PadToLongest:
    """Ray Data as usually written: each ``batch_size`` batch padded to its longest row."""

    def __init__(self, threads: int) -> None:
        self.model = PooledMiniLM(threads)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import torch

        started_s = time.monotonic()
        rows = list(batch["input_ids"])
        longest = max(len(row) for row in rows)
        ids = torch.zeros((len(rows), longest), dtype=torch.int64)  # 0: [PAD]
        mask = torch.zeros_like(ids)
        for i, (row, row_mask) in enumerate(zip(rows, batch["attention_mask"])):
            ids[i, : len(row)] = torch.from_numpy(np.asarray(row))
            mask[i, : len(row)] = torch.from_numpy(np.asarray(row_mask))
        embeddings = self.model.predict_batch(ids, mask).numpy()
        real = sum(len(row) for row in rows)
        return _timed(batch, embeddings, started_s, real, len(rows) * longest, 1)


def _timed(batch: dict[str, Any], embeddings: np.ndarray, started_s: float, real: int,
           padded: int, calls: int) -> dict[str, Any]:
    """The output columns plus what the driver sums: time span, tokens, calls (first row)."""
    count = len(embeddings)
    first = np.zeros(count, dtype=np.int64)
    first[0] = 1
    return {"index": batch["index"], "embedding": embeddings,
            "started_s": np.full(count, started_s), "finished_s": np.full(count, time.monotonic()),
            "real_tokens": first * real, "padded_tokens": first * padded, "calls": first * calls}


def _timed_predictor() -> type:
    from batch_inference.ray.data import BatchedPredictor

    class TimedPredictor(BatchedPredictor):
        """:class:`BatchedPredictor` plus the columns :func:`_timed` adds."""

        def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
            started_s = time.monotonic()
            before = (self.real_tokens, self.padded_tokens, self.batches)
            out = super().__call__(batch)
            return _timed(out, out["embedding"], started_s, self.real_tokens - before[0],
                          self.padded_tokens - before[1], self.batches - before[2])

    return TimedPredictor


def _ray_main(settings: dict[str, Any]) -> None:
    """Inside the namespace: both Ray Data runs; embeddings to files, figures as JSON."""
    from batch_inference.batcher.seq_batcher import SeqBatcher
    from benchmarks.ray_local import init_ray

    ray = init_ray(num_cpus=max(2, os.cpu_count() or 1))
    queries = corpus(settings["count"], settings["vocab_size"], settings["shortest"],
                     settings["longest"], settings["seed"])
    items = [{"index": i, "input_ids": q[0][0].numpy(), "attention_mask": q[1][0].numpy()}
             for i, q in enumerate(queries)]
    dataset = ray.data.from_items(items, override_num_blocks=settings["blocks"])
    threads, size = settings["threads"], settings["max_batch_size"]
    runs = {
        "Ray Data, default batching": dict(
            fn=PadToLongest, fn_constructor_kwargs={"threads": threads}, batch_size=size),
        "Ray Data + BatchedPredictor": dict(
            fn=_timed_predictor(), batch_size=None, fn_constructor_kwargs={
                "model_cls": PooledMiniLM, "model_kwargs": {"threads": threads},
                "batcher": SeqBatcher([0, 0], tensor="pt", output_seq_dim=None),
                "columns": ["input_ids", "attention_mask"], "max_batch_size": size,
                "output_column": "embedding"}),
    }
    report = []
    for number, (method, options) in enumerate(runs.items()):
        fn = options.pop("fn")
        with PeakMemory(all_processes_rss, 0.05) as memory:
            started = time.perf_counter()
            rows = dataset.map_batches(fn, concurrency=1, num_cpus=1, **options).take_all()
            total_s = time.perf_counter() - started
        rows.sort(key=lambda row: row["index"])
        file = f"ray{number}.npy"
        np.save(Path(settings["out"]) / file, np.stack([row["embedding"] for row in rows]))
        span_s = max(r["finished_s"] for r in rows) - min(r["started_s"] for r in rows)
        calls = sum(int(r["calls"]) for r in rows)
        report.append({
            "method": method, "queries": len(rows), "wall_s": span_s, "total_s": total_s,
            "padding_efficiency": sum(int(r["real_tokens"]) for r in rows)
            / sum(int(r["padded_tokens"]) for r in rows),
            "mean_batch_size": len(rows) / calls, "memory_mib": memory.growth_mib, "file": file,
        })
    ray.shutdown()
    print(json.dumps({"ray": ray.__version__, "rows": report}))


if __name__ == "__main__":
    _ray_main(json.loads(sys.argv[1]))
