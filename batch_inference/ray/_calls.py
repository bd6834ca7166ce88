"""Calling a deployment of :mod:`batch_inference.ray.serve` with this library's error types.

Ray wraps an exception raised in a replica in a ``RayTaskError`` that also
derives from the original type; :func:`call` and :func:`call_async` re-raise
the original exception itself, and turn Ray's own failures into this
library's types (:func:`unwrap_error`). Imports Ray only when called.
"""

import asyncio
from typing import Any

from ..errors import QueueFullError, RemoteHostLostError, RequestTimeoutError

__all__ = ["call", "call_async", "unwrap_error"]


def call(handle: Any, *args: Any, timeout_s: float | None = None) -> Any:
    """``handle.predict.remote(*args).result()``, with the errors of :func:`unwrap_error`.

    For a thread; from a coroutine (another deployment, an async app), use :func:`call_async`.
    """
    response = handle.predict.remote(*args, timeout_s=timeout_s)
    try:
        return response.result(timeout_s=None if timeout_s is None else timeout_s + 1.0)
    except BaseException as error:
        _reraise(error, response, timeout_s)


async def call_async(handle: Any, *args: Any, timeout_s: float | None = None) -> Any:
    """``await handle.predict.remote(*args)``, with the errors of :func:`unwrap_error`."""
    response = handle.predict.remote(*args, timeout_s=timeout_s)
    try:
        if timeout_s is None:
            return await response
        return await asyncio.wait_for(_awaited(response), timeout_s + 1.0)
    except BaseException as error:
        _reraise(error, response, timeout_s)


async def _awaited(response: Any) -> Any:
    return await response


def _reraise(error: BaseException, response: Any, timeout_s: float | None) -> None:
    if isinstance(error, TimeoutError):
        response.cancel()
    unwrapped = unwrap_error(error, timeout_s)
    if unwrapped is error:
        raise error
    # The original exception keeps its own cause; Ray's wrapper is not shown as context.
    raise unwrapped from unwrapped.__cause__


def unwrap_error(error: BaseException, timeout_s: float | None = None) -> BaseException:
    """The error a caller of the replica's host would have seen, for one Ray raised.

    * ``RayTaskError`` (an exception raised in the replica): its ``cause``,
      the original exception object (a library error or the model's own);
    * the replica died (``RayActorError``, ``ActorUnavailableError``):
      :class:`~batch_inference.errors.RemoteHostLostError`;
    * ``BackPressureError`` (Serve's ``max_queued_requests``):
      :class:`~batch_inference.errors.QueueFullError`;
    * ``TimeoutError`` (the response was not ready in time):
      :class:`~batch_inference.errors.RequestTimeoutError`;
    * anything else: ``error`` itself.
    """
    from ray import exceptions as ray_errors
    from ray.serve.exceptions import BackPressureError

    if isinstance(error, ray_errors.RayTaskError) and isinstance(error.cause, BaseException):
        return error.cause
    if isinstance(error, (ray_errors.RayActorError, ray_errors.ActorUnavailableError)):
        lost = RemoteHostLostError(f"the Serve replica serving this request died: {error}")
        lost.__cause__ = error
        return lost
    if isinstance(error, BackPressureError):
        full = QueueFullError(f"Serve refused the request (max_queued_requests): {error}")
        full.__cause__ = error
        return full
    if isinstance(error, TimeoutError) and not isinstance(error, RequestTimeoutError):
        late = RequestTimeoutError(f"no answer from the deployment within timeout_s={timeout_s!r}")
        late.__cause__ = error
        return late
    return error
