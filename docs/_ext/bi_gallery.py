"""sphinx-gallery hooks: tutorials apart from benchmark reports, and a fresh torch state for each.

Every page is a ``tutorials/plot_*.py`` script (one folder, so paths stay put).
The gallery's index shows two sections: **Tutorials** (:data:`TUTORIALS`, where
you learn the API, in reading order) and **Benchmark reports** (every other
script: :data:`REPORTS_FIRST`, then by file name). A new script is a report
until it is named in :data:`TUTORIALS`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

#: Tutorials (you learn the API), in this order; shown first, in their own section.
TUTORIALS = (
    "plot_quickstart.py",
    "plot_asyncio.py",
    "plot_custom_batcher.py",
    "plot_reliability.py",
)
#: Benchmark reports shown first, in this order; every other report follows by file name.
REPORTS_FIRST = ("plot_bert_embedding.py",)

TUTORIALS_TITLE = "Tutorials"
TUTORIALS_INTRO = "Learn the API: each page runs a small example and shows what it returns."
REPORTS_TITLE = "Benchmark reports"
REPORTS_INTRO = ("What batching is worth, measured side by side on the machine that built "
                 "these docs (the harnesses live in the repository's ``benchmarks/``).")
_SECTIONS = ((TUTORIALS_TITLE, TUTORIALS_INTRO), (REPORTS_TITLE, REPORTS_INTRO))

# sphinx-gallery's thumbnail markup (sphinx_gallery.backreferences: THUMBNAIL_PARENT_DIV and
# THUMBNAIL_PARENT_DIV_CLOSE, checked by the tests), and the start of one example's thumbnail.
_OPEN = ("\n.. raw:: html\n\n    <div class=\"sphx-glr-thumbnails\">\n\n"
         ".. thumbnail-parent-div-open\n")
_CLOSE = "\n.. thumbnail-parent-div-close\n\n.. raw:: html\n\n    </div>\n\n"
_THUMB = re.compile(r"\n\.\. raw:: html\n\n    <div class=\"sphx-glr-thumbcontainer\"")
_DOC = re.compile(r":doc:`[^`]*?(plot_\w+)`")


def section_of(name: str) -> int:
    """0 for a tutorial, 1 for a benchmark report (``name``: a file name or a path)."""
    return 0 if os.path.basename(name) in TUTORIALS else 1


class TutorialOrder:
    """``within_subsection_order``: :data:`TUTORIALS`, then the reports (see the module)."""

    def __init__(self, src_dir: str) -> None:
        self.src_dir = src_dir

    def __call__(self, filename: str) -> tuple[int, int, str]:
        name = os.path.basename(filename)
        first = TUTORIALS if section_of(name) == 0 else REPORTS_FIRST
        rank = first.index(name) if name in first else len(first)
        return section_of(name), rank, name

    def __repr__(self) -> str:  # sphinx-gallery hashes the config through repr
        return "<TutorialOrder>"


def _heading(title: str, intro: str) -> str:
    return f"\n{title}\n{'-' * len(title)}\n\n{intro}\n"


def split_index(text: str) -> str:
    """The gallery index's one block of thumbnails as two sections: tutorials, then reports.

    ``text`` is the ``index.rst`` sphinx-gallery wrote (its header, one block of
    thumbnails, then its toctree); the result keeps everything else as it is.
    A text already split, or one with no block of thumbnails, comes back
    unchanged.

    Raises
    ------
    ValueError
        When a thumbnail names no ``plot_*`` page (sphinx-gallery changed its markup).
    """
    start, end = text.find(_OPEN), text.find(_CLOSE)
    done = any(_heading(title, intro) in text for title, intro in _SECTIONS)
    if done or start < 0 or end < start or text.count(_OPEN) != 1:
        return text
    block = text[start + len(_OPEN):end]
    starts = [m.start() for m in _THUMB.finditer(block)]
    thumbs = [block[a:b] for a, b in zip(starts, starts[1:] + [len(block)])]
    groups: tuple[list[str], list[str]] = ([], [])
    for thumb in thumbs:
        found = _DOC.search(thumb)
        if found is None:
            raise ValueError(f"a gallery thumbnail names no plot_* page: {thumb.strip()[:200]!r}")
        groups[section_of(found.group(1) + ".py")].append(thumb)
    sections = ""
    for (title, intro), group in zip(_SECTIONS, groups):
        if group:
            sections += _heading(title, intro) + _OPEN + "".join(group) + _CLOSE
    return text[:start] + sections + text[end + len(_CLOSE):]


def _split_gallery_index(app: Any) -> None:
    """Once sphinx-gallery has written the gallery's ``index.rst``: :func:`split_index` it."""
    conf = app.config.sphinx_gallery_conf
    index = Path(app.srcdir) / conf["gallery_dirs"] / "index.rst"
    if index.is_file():
        text = index.read_text(encoding="utf-8")
        split = split_index(text)
        if split != text:
            index.write_text(split, encoding="utf-8")


_default_threads: list[int] = []  # torch's thread count before the first tutorial ran


def reset_torch(gallery_conf: dict[str, Any], fname: str) -> None:
    """Before each tutorial: seed torch's generator and restore torch's thread count.

    A tutorial that changes ``torch.set_num_threads`` must not change the
    next one's measurements.
    """
    import torch

    if not _default_threads:
        _default_threads.append(torch.get_num_threads())
    torch.manual_seed(0)
    if torch.get_num_threads() != _default_threads[0]:
        torch.set_num_threads(_default_threads[0])


def setup(app: Any) -> dict[str, Any]:
    # sphinx-gallery writes the index at builder-inited (priority 500); split it after.
    app.connect("builder-inited", _split_gallery_index, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
