"""sphinx-gallery hooks: the order of the tutorials, and a fresh torch state for each."""

from __future__ import annotations

import os
from typing import Any

#: Tutorials shown first, in this order; every other ``plot_*.py`` follows by file name.
FIRST = (
    "plot_quickstart.py",
    "plot_asyncio.py",
    "plot_bert_embedding.py",
    "plot_custom_batcher.py",
)


class TutorialOrder:
    """``within_subsection_order``: :data:`FIRST`, then the rest alphabetically."""

    def __init__(self, src_dir: str) -> None:
        self.src_dir = src_dir

    def __call__(self, filename: str) -> tuple[int, str]:
        name = os.path.basename(filename)
        rank = FIRST.index(name) if name in FIRST else len(FIRST)
        return rank, name

    def __repr__(self) -> str:  # sphinx-gallery hashes the config through repr
        return "<TutorialOrder>"


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
