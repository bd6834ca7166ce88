"""Typed errors raised by :mod:`batch_inference`.

Every error a user can cause derives from :class:`BatchInferenceError`, so
``except BatchInferenceError`` catches all of them. Exceptions raised by the
user's own ``predict_batch`` are *not* wrapped: each caller receives the
original exception object, with its traceback.
"""

from __future__ import annotations

__all__ = [
    "BatchInferenceError",
    "ConfigurationError",
    "InvalidRequestError",
    "HostNotRunningError",
    "HostAlreadyRunningError",
    "HostStoppedError",
    "HostBrokenError",
    "QueueFullError",
    "RequestTimeoutError",
    "OutputMismatchError",
]


class BatchInferenceError(Exception):
    """Base class of every error raised by this library."""


class ConfigurationError(BatchInferenceError, ValueError):
    """A host, decorator or batcher setting is invalid (the message names it)."""


class InvalidRequestError(BatchInferenceError, ValueError):
    """A request's arguments cannot be batched (wrong count, type, rank, length...).

    Raised in the caller's own thread by ``predict``/``submit`` before the
    request is queued, so a bad request never spoils the batch of others.
    """


class HostNotRunningError(BatchInferenceError, RuntimeError):
    """``predict`` was called before ``start()`` or after ``stop()``."""


class HostAlreadyRunningError(BatchInferenceError, RuntimeError):
    """``start()`` was called on a host that is running (batch-inference 1.0 raises
    ``RuntimeError`` there too); ``stop()`` it first."""


class HostStoppedError(BatchInferenceError, RuntimeError):
    """The host was stopped with ``cancel_pending=True`` before this request ran."""


class HostBrokenError(BatchInferenceError, RuntimeError):
    """A worker died (the model raised a ``BaseException`` such as ``KeyboardInterrupt``).

    Every pending caller receives this error, with the original exception as
    ``__cause__``; the host refuses further requests.
    """


class QueueFullError(BatchInferenceError, RuntimeError):
    """The host's queue holds ``max_queue_size`` requests already."""


class RequestTimeoutError(BatchInferenceError, TimeoutError):
    """The caller's deadline passed before its result was ready."""


class OutputMismatchError(BatchInferenceError, RuntimeError):
    """``predict_batch`` returned something that cannot be split into one result per request.

    The message states what was expected and what came back.
    """
