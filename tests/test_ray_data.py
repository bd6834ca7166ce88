"""BatchedPredictor, the Ray Data adapter: called directly (no Ray), and in a real pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from batch_inference.batcher import BucketSeqBatcher, ConcatBatcher, LengthAwareBatcher, SeqBatcher
from batch_inference.errors import ConfigurationError, InvalidRequestError
from batch_inference.ray.data import BatchedPredictor

ROOT = Path(__file__).resolve().parents[1]


def ragged(rows: list[np.ndarray]) -> np.ndarray:
    """A column of rows of different lengths, as Ray Data hands one over (an object array)."""
    column = np.empty(len(rows), dtype=object)
    for i, row in enumerate(rows):
        column[i] = row
    return column


def token_blocks(vocab_size: int) -> list[dict[str, Any]]:
    """Two blocks of ``input_ids``/``attention_mask`` rows of shuffled lengths, plus an id."""
    rng = np.random.default_rng(0)
    blocks = []
    for lengths in ([9, 2, 17, 5, 30, 3, 12], [4, 25, 1, 8, 16]):
        ids = [rng.integers(1000, vocab_size, size=n) for n in lengths]
        blocks.append({"input_ids": ragged(ids),
                       "attention_mask": ragged([np.ones(n, dtype=np.int64) for n in lengths]),
                       "id": np.arange(len(lengths)) + 100 * len(blocks)})
    return blocks


def test_a_two_block_dataset_gets_what_each_row_alone_gets(minilm_embedding, minilm) -> None:
    predictor = BatchedPredictor(
        model_obj=minilm_embedding, batcher=SeqBatcher([0, 0], tensor="pt"),
        columns=["input_ids", "attention_mask"], max_batch_size=3, output_column="hidden")
    for block in token_blocks(minilm.vocab_size):
        out = predictor(block)
        assert sorted(out) == ["hidden", "id"]  # the model's columns give way to its output
        assert np.array_equal(out["id"], block["id"])
        for i, ids in enumerate(block["input_ids"]):
            alone = minilm_embedding.predict_batch(
                torch.from_numpy(ids)[None], torch.ones(1, len(ids), dtype=torch.int64))[0]
            assert out["hidden"][i].shape == (len(ids), 384)  # trimmed back to its own length
            np.testing.assert_allclose(out["hidden"][i], alone.numpy(), atol=1e-4, rtol=0)
    assert predictor.batches == 3 + 2  # 7 rows, then 5, in batches of at most 3
    assert predictor.real_tokens == sum([9, 2, 17, 5, 30, 3, 12, 4, 25, 1, 8, 16])


class RunningSum:
    """``cumsum`` along the sequence: padding at the end never changes a row's own positions."""

    def predict_batch(self, ids: np.ndarray) -> np.ndarray:
        return np.cumsum(ids, axis=1)


@pytest.mark.parametrize(("batcher", "padded"), [
    (SeqBatcher([0], tensor="np"), 36 + 4),
    # Buckets [1, 3], [4, 6], [7, ...]: (7, 8), (1, 2), (3), (4, 5), (6).
    (BucketSeqBatcher([0], buckets=[3, 6], tensor="np"), 16 + 4 + 3 + 10 + 6),
    (LengthAwareBatcher([0], tensor="np"), 36 + 4),
], ids=["SeqBatcher", "BucketSeqBatcher", "LengthAwareBatcher"])
def test_each_block_is_sorted_by_length_before_it_is_cut(batcher: Any, padded: int) -> None:
    lengths = [8, 1, 7, 2, 6, 3, 5, 4]
    block = {"ids": ragged([np.arange(1, n + 1) for n in lengths])}
    predictor = BatchedPredictor(RunningSum, batcher, columns=["ids"], max_batch_size=2)
    out = predictor(block)
    for n, row in zip(lengths, out["output"]):
        assert np.array_equal(row, np.cumsum(np.arange(1, n + 1)))
    # Sorted, the pairs are (1, 2), (3, 4), (5, 6), (7, 8): one padded token per pair. In the
    # block's own order, (8, 1), (7, 2), (6, 3), (5, 4) would cost 52 padded tokens.
    assert predictor.padded_tokens == padded


def test_a_fixed_shape_column_and_a_dict_output() -> None:
    class Halves:
        def predict_batch(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"low": x[:, :2], "high": x[:, 2:]}

    block = {"x": np.arange(12.0).reshape(3, 4)}
    out = BatchedPredictor(Halves, ConcatBatcher(tensor="pt"), columns=["x"])(block)
    assert np.array_equal(out["low"], block["x"][:, :2])
    assert np.array_equal(out["high"], block["x"][:, 2:])


def test_settings_and_batches_are_checked_with_the_bad_value_named() -> None:
    with pytest.raises(ConfigurationError, match="exactly one of model_cls and model_obj"):
        BatchedPredictor(batcher=SeqBatcher([0]), columns=["ids"])
    with pytest.raises(ConfigurationError, match="batcher must be a Batcher instance, got 3"):
        BatchedPredictor(RunningSum, 3, columns=["ids"])  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="columns must name .* got 'ids'"):
        BatchedPredictor(RunningSum, SeqBatcher([0]), columns="ids")
    with pytest.raises(ConfigurationError, match="max_batch_size must be .* got 0"):
        BatchedPredictor(RunningSum, SeqBatcher([0]), columns=["ids"], max_batch_size=0)
    predictor = BatchedPredictor(RunningSum, SeqBatcher([0]), columns=["ids"])
    with pytest.raises(InvalidRequestError, match="no column 'ids'; it has \\['tokens'\\]"):
        predictor({"tokens": ragged([np.ones(2)])})


def test_the_package_imports_without_ray() -> None:
    code = ("import sys; sys.modules['ray'] = None\n"
            "import batch_inference, batch_inference.ray, batch_inference.ray.data\n"
            "print('ray' in sys.modules and sys.modules['ray'] is not None)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_real_ray_data_pipeline_on_loopback_only() -> None:
    pytest.importorskip("ray")
    from benchmarks.ray_local import netns_available, run_isolated

    ok, why = netns_available()
    if not ok:
        pytest.skip(f"no loopback-only namespace for Ray here: {why}")
    done = run_isolated([str(ROOT / "tests" / "_ray_data_child.py")], timeout_s=300,
                        env={"PYTHONPATH": str(ROOT)})
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and lines, done.stderr[-2000:]
    report = json.loads(lines[-1])
    assert report == {"rows": 10, "differ": [], "outside": []}
