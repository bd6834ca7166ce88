"""Run by tests/test_ray_data.py inside ``benchmarks.ray_local.run_isolated``.

A real Ray Data pipeline (two blocks) through ``BatchedPredictor``; prints one
JSON line: rows seen, rows whose output differs from the model on that row
alone, and any socket or interface that reaches past this machine.
"""

from __future__ import annotations

import json

import numpy as np

from batch_inference.batcher.seq_batcher import SeqBatcher
from batch_inference.ray.data import BatchedPredictor
from benchmarks.ray_local import check_sockets, init_ray


class RunningSum:
    """``predict_batch(ids) -> cumsum(ids)``: each position sees the ones before it only."""

    def predict_batch(self, ids: np.ndarray) -> np.ndarray:
        return np.cumsum(ids, axis=1)


def main() -> None:
    ray = init_ray(num_cpus=2)
    lengths = [5, 1, 7, 3, 2, 6, 4, 1, 8, 2]
    items = [{"index": i, "ids": np.arange(1, n + 1) * (i + 1)} for i, n in enumerate(lengths)]
    dataset = ray.data.from_items(items, override_num_blocks=2)
    rows = dataset.map_batches(
        BatchedPredictor,
        fn_constructor_kwargs={"model_cls": RunningSum, "batcher": SeqBatcher([0], tensor="np"),
                               "columns": ["ids"], "max_batch_size": 3,
                               "output_column": "sums"},
        batch_size=None, concurrency=1,
    ).take_all()
    alone = {i: RunningSum().predict_batch(item["ids"][None])[0] for i, item in enumerate(items)}
    differ = [int(row["index"]) for row in rows
              if not np.array_equal(np.asarray(row["sums"]), alone[int(row["index"])])]
    problems = check_sockets()
    ray.shutdown()
    print(json.dumps({"rows": len(rows), "differ": differ, "outside": problems}))


if __name__ == "__main__":
    main()
