"""Checks on the built site: every tutorial ran, and the BERT table is complete.

Hooked on ``build-finished``: the build fails (non-zero exit) when

* a ``tutorials/plot_*.py`` has no page, or its page reports no running time
  or 0 seconds (it did not execute: e.g. a ``plot_gallery=0`` build);
* the BERT tutorial's page lacks its results table, a row of it (Baseline,
  Sequence Batcher 4 / 8 / 32, Bucket Sequence Batcher 32), a column, a
  positive measurement, or its figures;
* a page loads a script, stylesheet, image or frame from the internet (the
  site must work offline).

It also logs every tutorial's running time.

The same functions check a page dumped by a real browser
(``tests/test_docs_browser.py``), and ``python docs/_ext/bi_checks.py
docs/_build/html`` runs them on a built site. Set ``bi_require_execution =
False`` (``-D bi_require_execution=0``) for a quick build without execution.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

GALLERY_DIR = "auto_tutorials"
BERT_PAGE = "plot_bert_embedding"

#: The columns of batch-inference 1.0's BERT page plus ours, as the BERT table must show them.
BERT_COLUMNS = (
    "Method", "Query Count", "Execution Time", "Max Batch Size Setting", "Avg Batch Size",
    "Queries/s", "Speed-up",
)
#: (Method, Max Batch Size Setting) of every row the BERT table must have.
BERT_ROWS = (
    ("Baseline", "/"),
    ("Sequence Batcher", "4"),
    ("Sequence Batcher", "8"),
    ("Sequence Batcher", "32"),
    ("Bucket Sequence Batcher", "32"),
)
_RUNNING_TIME = re.compile(
    r"Total running time of the script:\s*\(\s*(\d+)\s*minutes\s*([\d.]+)\s*seconds\s*\)"
)


@dataclass
class Page:
    """What the checks read from one HTML page."""

    text: str = ""
    tables: list[list[list[str]]] = field(default_factory=list)  # table -> row -> cell text
    images: list[str] = field(default_factory=list)  # <img src>


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self._text: list[str] = []
        self._skip = 0
        self._tables: list[list[list[str]]] = []  # open tables (nested ones stack)
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag == "table":
            self._tables.append([])
        elif tag == "tr" and self._tables:
            self._tables[-1].append([])
        elif tag in ("td", "th") and self._tables:
            self._cell = []
        elif tag == "img":
            src = dict(attrs).get("src")
            if src:
                self.page.images.append(src)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag in ("td", "th") and self._cell is not None and self._tables:
            if not self._tables[-1]:
                self._tables[-1].append([])
            self._tables[-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table" and self._tables:
            self.page.tables.append(self._tables.pop())

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        self._text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def close(self) -> None:
        super().close()
        self.page.text = " ".join("".join(self._text).split())


def parse_page(html: str) -> Page:
    """Text, tables and image sources of an HTML page."""
    parser = _PageParser()
    parser.feed(html)
    parser.close()
    return parser.page


def running_time_s(page: Page) -> float | None:
    """The "Total running time of the script" a gallery page reports, or ``None``."""
    match = _RUNNING_TIME.search(page.text)
    if match is None:
        return None
    return int(match.group(1)) * 60 + float(match.group(2))


def tutorial_problems(html_dir: Path, tutorial_names: list[str]) -> list[str]:
    """Problems with the gallery pages of these tutorials (file names without ``.py``)."""
    problems = []
    for name in tutorial_names:
        path = html_dir / GALLERY_DIR / f"{name}.html"
        if not path.exists():
            problems.append(f"{name}: no page at {path}")
            continue
        seconds = running_time_s(parse_page(path.read_text(encoding="utf-8")))
        if seconds is None:
            problems.append(f"{name}: the page reports no running time (not executed?)")
        elif seconds <= 0:
            problems.append(f"{name}: the page reports {seconds} seconds (not executed)")
    return problems


def _number(cell: str) -> float | None:
    match = re.search(r"[-+]?\d+(\.\d+)?", cell)
    return float(match.group(0)) if match else None


def find_table(page: Page, columns: tuple[str, ...]) -> tuple[list[str], list[list[str]]] | None:
    """The first table whose header row holds all ``columns``: ``(header, data rows)``."""
    for table in page.tables:
        for i, row in enumerate(table):
            if all(column in row for column in columns):
                return row, [r for r in table[i + 1:] if len(r) == len(row)]
    return None


def bert_table_problems(page: Page) -> list[str]:
    """Problems with the BERT results table on the BERT tutorial's page."""
    found = find_table(page, BERT_COLUMNS)
    if found is None:
        return [f"the BERT page has no table with the columns {list(BERT_COLUMNS)}"]
    header, rows = found
    at = {column: header.index(column) for column in BERT_COLUMNS}
    problems = []
    for method, size in BERT_ROWS:
        match = [r for r in rows
                 if r[at["Method"]] == method and r[at["Max Batch Size Setting"]] == size]
        if not match:
            problems.append(f"the BERT table lacks the row {method!r} with max batch {size}")
            continue
        for column in ("Query Count", "Execution Time", "Avg Batch Size", "Queries/s",
                       "Speed-up"):
            value = _number(match[0][at[column]])
            if value is None or value <= 0:
                problems.append(
                    f"the BERT row {method!r} {size}: {column} is {match[0][at[column]]!r}, "
                    "not a positive number"
                )
    return problems


def figure_problems(page: Page, page_path: Path, name: str, least: int = 2) -> list[str]:
    """At least ``least`` sphinx-gallery figures of ``name`` on the page, files present."""
    figures = [src for src in page.images if f"sphx_glr_{name}_" in src
               and "thumb" not in src]
    problems = []
    if len(figures) < least:
        problems.append(f"{name}: {len(figures)} figure(s) on the page, expected {least}+")
    for src in figures:
        if not (page_path.parent / src).resolve().exists():
            problems.append(f"{name}: the figure {src} is missing on disk")
    return problems


_REMOTE = re.compile(
    r"<(?:script|img|iframe)\b[^>]*\bsrc=[\"']https?://[^\"']*"
    r"|<link\b[^>]*\bhref=[\"']https?://[^\"']*",
    re.IGNORECASE,
)


def remote_resource_problems(html_dir: Path) -> list[str]:
    """Pages that load a script, stylesheet, image or frame from the internet."""
    problems = []
    for path in sorted(html_dir.rglob("*.html")):
        for match in sorted(set(_REMOTE.findall(path.read_text(encoding="utf-8")))):
            problems.append(f"{path.relative_to(html_dir)} loads a remote resource: {match}")
    return problems


def running_times(html_dir: Path, tutorial_names: list[str]) -> dict[str, float | None]:
    """Each tutorial's reported running time in seconds (``None`` when absent)."""
    times: dict[str, float | None] = {}
    for name in tutorial_names:
        path = html_dir / GALLERY_DIR / f"{name}.html"
        times[name] = running_time_s(parse_page(path.read_text(encoding="utf-8"))) \
            if path.exists() else None
    return times


def site_problems(html_dir: Path, tutorial_names: list[str]) -> list[str]:
    """Every check on a built site."""
    problems = tutorial_problems(html_dir, tutorial_names)
    problems += remote_resource_problems(html_dir)
    bert = html_dir / GALLERY_DIR / f"{BERT_PAGE}.html"
    if bert.exists():
        page = parse_page(bert.read_text(encoding="utf-8"))
        problems += bert_table_problems(page)
        problems += figure_problems(page, bert, BERT_PAGE)
    elif BERT_PAGE not in tutorial_names:
        problems.append(f"{BERT_PAGE}.py is not among the tutorials")
    return problems


def tutorial_names(examples_dir: Path) -> list[str]:
    """File names (without ``.py``) of every ``plot_*.py`` in ``examples_dir``."""
    return sorted(p.stem for p in examples_dir.glob("plot_*.py"))


def _on_build_finished(app: Any, exception: BaseException | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    if not app.config.bi_require_execution:
        return
    examples = Path(app.srcdir) / app.config.sphinx_gallery_conf["examples_dirs"]
    names = tutorial_names(examples)
    from sphinx.util import logging

    logger = logging.getLogger(__name__)
    for name, seconds in running_times(Path(app.outdir), names).items():
        shown = "not reported" if seconds is None else f"{seconds:.1f} s"
        logger.info(f"tutorial running time: {name}: {shown}")
    problems = site_problems(Path(app.outdir), names)
    if problems:
        from sphinx.errors import ExtensionError

        raise ExtensionError("docs checks failed:\n  - " + "\n  - ".join(problems))


def setup(app: Any) -> dict[str, Any]:
    app.add_config_value("bi_require_execution", True, "env", bool)
    app.connect("build-finished", _on_build_finished)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


def main(argv: list[str]) -> int:
    """``python docs/_ext/bi_checks.py HTML_DIR [TUTORIALS_DIR]``: exit 1 on problems."""
    html_dir = Path(argv[1]) if len(argv) > 1 else Path("docs/_build/html")
    examples = Path(argv[2]) if len(argv) > 2 else Path("tutorials")
    problems = site_problems(html_dir, tutorial_names(examples))
    for problem in problems:
        print(f"FAIL: {problem}")
    if not problems:
        print(f"ok: {len(tutorial_names(examples))} tutorial pages executed; BERT table complete")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
