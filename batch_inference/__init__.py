"""batch_inference: dynamic batching for model inference.

Many callers (threads or asyncio tasks) send one request each; a worker groups
waiting requests into batches, calls the model's ``predict_batch`` once per
batch, and hands every caller its own slice of the output.
"""

from .decorator import batching
from .errors import (
    BatchInferenceError,
    ConfigurationError,
    HostAlreadyRunningError,
    HostBrokenError,
    HostNotRunningError,
    HostStoppedError,
    InvalidRequestError,
    OutputMismatchError,
    QueueFullError,
    RequestTimeoutError,
)
from .host import ModelHost
from .stats import HostStats, Percentiles

__version__ = "0.1.0"

__all__ = [
    "BatchInferenceError",
    "ConfigurationError",
    "HostAlreadyRunningError",
    "HostBrokenError",
    "HostNotRunningError",
    "HostStats",
    "HostStoppedError",
    "InvalidRequestError",
    "ModelHost",
    "OutputMismatchError",
    "Percentiles",
    "QueueFullError",
    "RequestTimeoutError",
    "batching",
    "__version__",
]
