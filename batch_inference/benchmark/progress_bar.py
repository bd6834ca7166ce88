"""A progress bar over a benchmark's measured runs, shown only where someone is watching.

:func:`progress` wraps the loop over a page's or a report's measured runs in a
``tqdm`` bar on stderr, one step per run. It shows itself only when

* the script does not run inside a docs build (``sphinx_gallery`` is not
  imported: sphinx-gallery executes the tutorials in the process of the build,
  whose output must stay clean), and
* stderr is a terminal, and ``tqdm`` (the ``bench`` extra) is installed;

``$BATCH_INFERENCE_PROGRESS`` set to ``1`` or ``0`` overrides the terminal test
(never the docs-build test). Otherwise the items pass through untouched.

The bar steps once per run, never per request: updating it from the client
threads of a measured run would add work to what is being measured.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, TypeVar

__all__ = ["PROGRESS_VARIABLE", "progress", "progress_enabled"]

T = TypeVar("T")

#: Environment variable forcing the bar on (``1``) or off (``0``) outside a docs build.
PROGRESS_VARIABLE = "BATCH_INFERENCE_PROGRESS"


def progress_enabled(stream: IO[str] | None = None) -> bool:
    """Whether :func:`progress` would show a bar on ``stream`` (default: stderr)."""
    if "sphinx_gallery" in sys.modules:  # executed by the docs build
        return False
    forced = os.environ.get(PROGRESS_VARIABLE, "").strip()
    if forced in ("0", "1"):
        wanted = forced == "1"
    else:
        stream = sys.stderr if stream is None else stream
        isatty = getattr(stream, "isatty", None)
        wanted = bool(isatty and isatty())
    if not wanted:
        return False
    try:
        import tqdm  # noqa: F401 - only asking whether it is installed
    except ImportError:
        return False
    return True


def progress(
    iterable: Iterable[T],
    desc: str,
    total: int | None = None,
    label: Callable[[T], str] | None = None,
    file: IO[str] | None = None,
) -> Iterator[T]:
    """Yield the items of ``iterable``, with a bar on ``file`` (stderr) where enabled.

    Parameters
    ----------
    iterable:
        The measured runs (or anything that stands for them), one step each.
    desc:
        What the bar counts, e.g. ``"BERT runs"``.
    total:
        Number of steps, where ``len(iterable)`` does not give it.
    label:
        ``label(item)`` is shown beside the bar while that item's step runs.
    file:
        Where the bar goes; ``None`` is ``sys.stderr``.
    """
    stream = sys.stderr if file is None else file
    if not progress_enabled(stream):
        yield from iterable
        return
    from tqdm import tqdm

    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    bar: Any = tqdm(iterable, desc=desc, total=total, file=stream, dynamic_ncols=True)
    try:
        for item in bar:
            if label is not None:
                bar.set_postfix_str(label(item), refresh=True)
            yield item
    finally:
        bar.close()
