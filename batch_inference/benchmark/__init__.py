"""The measuring API: what you call to measure a host on your own model (tested in ``tests/``).

Closed loops of threads or asyncio tasks (:func:`closed_loop`,
:func:`async_closed_loop`), methods compared side by side from a host's stats
(:func:`measure_host`, :func:`comparison_table`), a call-cost model fitted from
real calls and a batching policy replayed against it (:func:`fit_cost_model`,
:func:`simulate_closed_loop`), the run's mode and environment, a progress bar,
and results saved as JSON. The docs' page harnesses (HTTP app and load, the
simulated accelerator, the reports) are not part of the package: they live in
the repository's ``benchmarks/``.

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
from .simulate import CostModel, SimulatedRun, fit_cost_model, simulate_closed_loop

__all__ = [
    "CostModel",
    "LoadResult",
    "MethodResult",
    "SimulatedRun",
    "StatsWindow",
    "answer_tolerance",
    "async_closed_loop",
    "closed_loop",
    "comparison_table",
    "environment",
    "fit_cost_model",
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
    "simulate_closed_loop",
    "stats_between",
]
