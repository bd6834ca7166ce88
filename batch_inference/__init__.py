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
    "WireFormatError",
    "batching",
    "remote_batching",
    "__version__",
]

# The remote mode imports ZeroMQ: loaded on first use, so `import batch_inference` stays light.
_REMOTE_NAMES = ("RemoteModelHost", "remote_batching")


def __getattr__(name: str) -> object:
    if name in _REMOTE_NAMES:
        from . import remote

        return getattr(remote, name)
    raise AttributeError(f"module 'batch_inference' has no attribute {name!r}")
