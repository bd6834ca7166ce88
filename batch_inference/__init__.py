"""batch_inference: dynamic batching for model inference.

Many callers (threads or asyncio tasks) send one request each; a worker groups
waiting requests into batches, calls the model's ``predict_batch`` once per
batch, and hands every caller its own slice of the output.
"""

from .batcher.base import Batcher
from .batcher.bucket_seq_batcher import BucketSeqBatcher
from .batcher.concat_batcher import ConcatBatcher
from .batcher.multi_batcher import MultiBatcher
from .batcher.seq_batcher import SeqBatcher
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
    RemoteHostLostError,
    RemoteModelError,
    RequestTimeoutError,
    WireFormatError,
)
from .host import ModelHost
from .stats import HostStats, Percentiles

__version__ = "0.1.0"

__all__ = [
    "BatchInferenceError",
    "Batcher",
    "BucketSeqBatcher",
    "ConcatBatcher",
    "ConfigurationError",
    "GenerationHost",
    "GenerationStats",
    "HostAlreadyRunningError",
    "HostBrokenError",
    "HostNotRunningError",
    "HostStats",
    "HostStoppedError",
    "InvalidRequestError",
    "ModelHost",
    "MultiBatcher",
    "OutputMismatchError",
    "Percentiles",
    "QueueFullError",
    "RemoteHostLostError",
    "RemoteModelError",
    "RemoteModelHost",
    "RequestTimeoutError",
    "SeqBatcher",
    "TokenStream",
    "WireFormatError",
    "batching",
    "remote_batching",
    "__version__",
]

# Loaded on first use, so that `import batch_inference` stays light: the remote mode imports
# ZeroMQ, and generation is a host of its own.
_LAZY = {
    "RemoteModelHost": "remote",
    "remote_batching": "remote",
    "GenerationHost": "generation",
    "GenerationStats": "generation",
    "TokenStream": "generation",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'batch_inference' has no attribute {name!r}")
