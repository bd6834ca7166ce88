"""Measuring helpers shared by the tutorials and benchmarks (tested in ``tests/``).

Nothing here imports pandas, matplotlib or transformers at import time.
"""

from .load import LoadResult, async_closed_loop, closed_loop, offline_batches
from .mode import environment, format_environment, run_mode

__all__ = [
    "LoadResult",
    "async_closed_loop",
    "closed_loop",
    "environment",
    "format_environment",
    "offline_batches",
    "run_mode",
]
