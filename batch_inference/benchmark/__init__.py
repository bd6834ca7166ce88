"""Measuring helpers shared by the tutorials and benchmarks (tested in ``tests/``).

Nothing here imports pandas, matplotlib, tqdm or transformers at import time.
"""

from .compare import (
    MethodResult,
    StatsWindow,
    comparison_table,
    measure_host,
    median_of_rounds,
    stats_between,
)
from .load import LoadResult, async_closed_loop, closed_loop, offline_batches, on_own_thread
from .mode import answer_tolerance, environment, format_environment, model_dtype, run_mode
from .progress_bar import progress, progress_enabled
from .results import load_results, save_results

__all__ = [
    "LoadResult",
    "MethodResult",
    "StatsWindow",
    "answer_tolerance",
    "async_closed_loop",
    "closed_loop",
    "comparison_table",
    "environment",
    "format_environment",
    "load_results",
    "measure_host",
    "median_of_rounds",
    "model_dtype",
    "offline_batches",
    "on_own_thread",
    "progress",
    "progress_enabled",
    "run_mode",
    "save_results",
    "stats_between",
]
