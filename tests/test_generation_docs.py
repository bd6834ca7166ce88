"""The generation page: in the site's toctree, and its streaming examples are run.

``tests/test_docs_checks.py::test_page_snippet_runs`` executes every ```python fence of
the Markdown pages (and checks the values their ``print(...)  # value`` comments state);
this checks that the generation page's fences hold the examples the page promises.
"""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _fences(page: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page, flags=re.M | re.S)


def test_generation_page_runs_its_api_protocol_and_streaming_examples() -> None:
    fences = _fences((DOCS / "generation.md").read_text())
    run = "\n".join(fences)
    assert len(fences) >= 3
    assert "host.generate(" in run and "def prefill" in run and "def step" in run
    assert ".iter(timeout=" in run and "async for" in run and "generate_async" in run
    assert re.search(r"^print\(.*\)\s+# ", run, flags=re.M)  # checked values


def test_generation_page_is_in_the_toctree() -> None:
    index = (DOCS / "index.md").read_text()
    assert re.search(r"^generation$", index, flags=re.M)
