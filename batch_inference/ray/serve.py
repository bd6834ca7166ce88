"""A Ray Serve deployment whose every replica batches with one :class:`~batch_inference.ModelHost`.

::

    from ray import serve
    from batch_inference.batcher.length_aware_batcher import LengthAwareBatcher
    from batch_inference.ray.serve import call, deployment

    app = deployment(Embedder, batcher=LengthAwareBatcher(...), max_batch_size=32,
                     num_replicas=2, ray_actor_options={"num_gpus": 1}).bind(weights_path)
    handle = serve.run(app)
    embedding = call(handle, input_ids, attention_mask)   # or HTTP: POST /predict

Each replica builds its model and starts its host in ``__init__``, stops it
in ``__del__`` (Serve's graceful-shutdown hook) and reports a broken host
from ``check_health()``, so Serve replaces the replica. Serve's
``max_ongoing_requests`` and the host's ``max_queue_size`` are set from
``max_batch_size`` by the rule of :func:`replica_limits`
(Serve's default of 5 would cap every batch at 5).

Errors. Ray wraps an exception raised in a replica in a ``RayTaskError``
that also derives from the original type; :func:`call` and :func:`call_async`
re-raise the original exception itself (``type(error) is QueueFullError``),
and turn Ray's own failures into this library's types: a replica that died
under the call (``RayActorError``, ``ActorUnavailableError``) into
:class:`~batch_inference.errors.RemoteHostLostError`, Serve's back-pressure
(``BackPressureError``, past ``max_queued_requests``) into
:class:`~batch_inference.errors.QueueFullError`, a timeout into
:class:`~batch_inference.errors.RequestTimeoutError`. Ray moves arguments,
results and exceptions by pickling them: only use it between processes you
trust (unlike :class:`~batch_inference.RemoteModelHost`, which unpickles nothing).

The rule itself is :func:`replica_limits`; :func:`call`, :func:`call_async` and
:func:`unwrap_error` come from ``batch_inference.ray._calls``. Imports Ray
only when :func:`deployment`, :func:`call` or :func:`call_async` runs.
"""

import asyncio
from collections.abc import Callable
from typing import Any

from ..errors import (
    BatchInferenceError,
    ConfigurationError,
    HostBrokenError,
    InvalidRequestError,
    QueueFullError,
    RequestTimeoutError,
)
from ..host import ModelHost
from ..stats import HostStats
from ._calls import call, call_async, unwrap_error
from ._settings import ReplicaLimits, autoscaling_with_target, check_interval, replica_limits

__all__ = ["ReplicaLimits", "call", "call_async", "deployment", "host_settings", "replica_limits",
           "unwrap_error"]

#: Host settings a ``@batching`` class carries, read from the host its ``host()`` builds.
_HOST_FIELDS = ("batcher", "max_batch_size", "max_delay_s", "max_batch_tokens", "num_workers",
                "devices", "max_queue_size", "default_timeout_s", "isolate_failures",
                "output_device")
#: Seconds ``__del__`` waits for the host's threads after Serve has drained the replica.
STOP_TIMEOUT_S = 30.0
_HTTP_STATUS = ((RequestTimeoutError, 504), (QueueFullError, 503), (HostBrokenError, 503),
                (InvalidRequestError, 422), (BatchInferenceError, 500))


def deployment(
    model_cls: type,
    *,
    name: str | None = None,
    batches_in_flight: int | None = None,
    max_ongoing_requests: int | None = None,
    num_replicas: int | str | None = None,
    autoscaling_config: dict[str, Any] | None = None,
    ray_actor_options: dict[str, Any] | None = None,
    http: bool = True,
    route: str = "/predict",
    decode: Callable[[Any], tuple[Any, ...]] | None = None,
    encode: Callable[[Any], Any] | None = None,
    deployment_options: dict[str, Any] | None = None,
    metrics_interval_s: float | None = 5.0,
    **host_options: Any,
) -> Any:
    """A Serve deployment (``ray.serve.Deployment``): ``model_cls`` behind one host per replica.

    ``.bind(*model_args, **model_kwargs)`` gives the application (the model's
    constructor arguments, instead of ``model_args``/``model_kwargs`` here).

    Parameters
    ----------
    model_cls:
        A class with ``predict_batch``. A ``@batching`` class brings its host
        settings; ``host_options`` override them.
    name:
        The deployment's name; default ``model_cls.__name__``.
    batches_in_flight, max_ongoing_requests:
        See :func:`replica_limits`.
    num_replicas, autoscaling_config, ray_actor_options:
        Passed to Serve (``{"num_gpus": 1}``: one replica per GPU).
        ``autoscaling_config["target_ongoing_requests"]`` is set by the rule.
    http:
        Serve HTTP through a FastAPI ingress: ``POST route`` with
        ``{"args": [...]}`` answers ``{"result": ...}``, and an error as
        ``{"error": <type name>, "message": ...}`` with status 422
        (invalid request), 503 (queue full, host broken), 504 (timeout) or
        500. Serve forbids ``__call__`` on an ingress, so handles call the
        ``predict`` method (:func:`call` does); with ``http=False``,
        ``handle.remote(...)`` also predicts.
    decode, encode:
        HTTP only: ``decode(json_body) -> args`` (default: each of ``"args"``
        as a ``torch.tensor``), ``encode(result) -> JSON value`` (default:
        ``result.tolist()`` where it has one).
    deployment_options:
        Other keywords of ``ray.serve.deployment`` (``max_queued_requests``,
        ``health_check_period_s``...).
    metrics_interval_s:
        Every replica copies its host's metrics (those of
        :mod:`batch_inference.metrics`, labelled ``host``: the deployment, and
        ``replica``) into Ray's own metrics this often, and once more when it
        stops, so that Ray's metrics endpoint reports them with a ``ray_``
        prefix (see ``batch_inference.ray._metrics``); ``None``: not at all.
    **host_options:
        Keywords of :class:`~batch_inference.ModelHost` (``batcher``,
        ``max_batch_size``, ``max_delay_s``, ``model_args``...).

    Raises
    ------
    ConfigurationError
        A host setting is invalid, or the limits disagree (the message names the value).
    """
    interval_s = check_interval(metrics_interval_s)
    settings = host_settings(model_cls, host_options)
    limits = replica_limits(
        settings["max_batch_size"], num_workers=_workers(settings),
        batches_in_flight=batches_in_flight, max_ongoing_requests=max_ongoing_requests,
        max_queue_size=settings.get("max_queue_size"),
        target_ongoing_requests=(autoscaling_config or {}).get("target_ongoing_requests"),
    )
    settings["max_queue_size"] = limits.max_queue_size
    ModelHost(model_cls, **settings)  # every setting checked now, in the caller's process
    from ray import serve

    attributes = {"_model_cls": model_cls, "_host_settings": settings,
                  "_metrics_interval_s": interval_s}
    replica: type = type(f"{model_cls.__name__}Replica", (_HostReplica,), attributes)
    if http:
        replica = _with_ingress(replica, route, decode or _decode_tensors, encode or _encode)
    else:
        replica.__call__ = replica.predict  # type: ignore[attr-defined]
    options = dict(deployment_options or {})
    options.update(name=name or model_cls.__name__,
                   max_ongoing_requests=limits.max_ongoing_requests)
    for key, value in (("num_replicas", num_replicas), ("ray_actor_options", ray_actor_options),
                       ("autoscaling_config", autoscaling_with_target(autoscaling_config, limits))):
        if value is not None:
            options[key] = value
    return serve.deployment(replica, **options)


def host_settings(model_cls: type, host_options: dict[str, Any]) -> dict[str, Any]:
    """The :class:`~batch_inference.ModelHost` keywords a replica uses: a ``@batching``
    class's own settings, with ``host_options`` on top."""
    settings: dict[str, Any] = {}
    builder = getattr(model_cls, "host", None)
    if callable(builder):  # a @batching class: its host carries the decorator's settings
        template = builder()
        if isinstance(template, ModelHost):
            settings = {field: getattr(template, field) for field in _HOST_FIELDS}
            if settings["devices"] is not None:
                settings.pop("num_workers")
    settings.update(host_options)
    settings.setdefault("max_batch_size", 32)
    for bad in ("model_obj",):
        if bad in settings:
            raise ConfigurationError(
                f"{bad} cannot travel to a replica: each replica builds its own model from "
                f"model_cls, got {bad}={settings[bad]!r}"
            )
    return settings


def _workers(settings: dict[str, Any]) -> int:
    devices = settings.get("devices")
    return len(devices) if devices else settings.get("num_workers", 1)


class _HostReplica:
    """One Serve replica: builds the model and starts the host in ``__init__``."""

    _model_cls: type
    _host_settings: dict[str, Any]
    _metrics_interval_s: float | None

    def __init__(self, *model_args: Any, **model_kwargs: Any) -> None:
        settings = dict(self._host_settings)
        if model_args:
            settings["model_args"] = model_args
        if model_kwargs:
            settings["model_kwargs"] = {**settings.get("model_kwargs", {}), **model_kwargs}
        self._host = ModelHost(self._model_cls, **settings).start()
        self._exporter: Any = None
        if self._metrics_interval_s is not None:
            from ray import serve

            from ._metrics import RayStatsExporter

            context = serve.get_replica_context()
            self._exporter = RayStatsExporter(
                self._host, context.deployment, context.replica_id.unique_id
            ).start(self._metrics_interval_s)

    async def predict(self, *args: Any, timeout_s: float | None = None) -> Any:
        """One request through the replica's host (``handle.predict.remote(...)``)."""
        return await self._host.predict_async(*args, timeout=timeout_s)

    def stats(self) -> HostStats:
        """This replica's :meth:`ModelHost.stats <batch_inference.ModelHost.stats>`."""
        return self._host.stats()

    def replica_stats(self) -> tuple[str, HostStats]:
        """``(replica id, stats)``: with several replicas, a handle's calls reach any
        one of them; the id tells them apart."""
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id, self._host.stats()

    def check_health(self) -> None:
        """Serve's health check: raise when the host is broken, so Serve replaces the replica."""
        if self._host.broken or not self._host.running:
            raise HostBrokenError(
                f"the host serving {self._model_cls.__name__} in this replica "
                f"{'is broken' if self._host.broken else 'is not running'}"
            )

    async def __del__(self) -> None:
        # Serve calls this after draining the replica's ongoing requests.
        host = self.__dict__.get("_host")
        if host is not None:
            await asyncio.get_running_loop().run_in_executor(None, host.stop, False,
                                                             STOP_TIMEOUT_S)
        exporter = self.__dict__.get("_exporter")
        if exporter is not None:  # the last counts, after the drain
            await asyncio.get_running_loop().run_in_executor(None, exporter.stop)


def _with_ingress(replica: type, route: str, decode: Callable[[Any], tuple[Any, ...]],
                  encode: Callable[[Any], Any]) -> type:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from ray import serve

    app = FastAPI()

    async def http_predict(self: Any, request: Request) -> Any:
        try:
            body = await request.json()
            args = decode(body)
        except Exception as error:  # the body, not the model: the client's mistake
            return JSONResponse({"error": "InvalidRequestError",
                                 "message": f"cannot decode the request body: {error}"}, 422)
        try:
            return {"result": encode(await self.predict(*args))}
        except Exception as error:
            status = next((code for kind, code in _HTTP_STATUS if isinstance(error, kind)), 500)
            return JSONResponse({"error": type(error).__name__, "message": str(error)}, status)

    # Ray's class-based view finds the class's routes by their qualified names.
    http_predict.__qualname__ = f"{replica.__qualname__}.http_predict"
    replica.http_predict = http_predict  # type: ignore[attr-defined]
    app.post(route)(http_predict)
    return serve.ingress(app)(replica)


def _decode_tensors(body: Any) -> tuple[Any, ...]:
    import torch

    if not isinstance(body, dict) or not isinstance(body.get("args"), list):
        raise InvalidRequestError(f'expected {{"args": [...]}}, got {str(body)[:100]!r}')
    return tuple(torch.tensor(value) for value in body["args"])


def _encode(result: Any) -> Any:
    return result.tolist() if hasattr(result, "tolist") else result
