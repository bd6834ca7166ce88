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
    "RemoteModelError",
    "RemoteHostLostError",
    "WireFormatError",
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


class RemoteModelError(BatchInferenceError, RuntimeError):
    """The model raised in the serving process of a :class:`~batch_inference.RemoteModelHost`.

    The exception object itself cannot cross processes (nothing received is
    unpickled), so this error carries its description instead.

    Attributes
    ----------
    remote_type:
        The qualified name of the remote exception's type, e.g. ``"ValueError"``.
    remote_message:
        ``str()`` of the remote exception.
    remote_traceback:
        The remote traceback, formatted as text.
    """

    def __init__(self, remote_type: str, remote_message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{remote_type}: {remote_message}")
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        return type(self), (self.remote_type, self.remote_message, self.remote_traceback)


class RemoteHostLostError(HostBrokenError):
    """The serving process of a :class:`~batch_inference.RemoteModelHost` went away.

    Raised on every call pending when the connection dropped (the server died or
    stopped) and on later calls until a new server answers on the same port.
    """


class WireFormatError(InvalidRequestError):
    """A value cannot cross between processes, or a message broke the wire format.

    The message names the value's type or the broken field. Raised in the
    caller's thread for arguments, and for a result the serving side could not
    encode.
    """
