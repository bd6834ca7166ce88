"""batch_inference.ray.serve: the max_ongoing_requests rule, typed errors, and a live deployment.

The live checks start Ray once, through ``benchmarks.ray_local.run_isolated``
(a loopback-only network namespace: Ray never runs in this machine's own
network), in ``tests/_ray_serve_support.py``, and read its JSON report.
Skipped, with the reason, where the namespace cannot be made or Ray is not
installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from batch_inference import BucketSeqBatcher, ConcatBatcher, batching
from batch_inference.errors import (
    ConfigurationError,
    InvalidRequestError,
    QueueFullError,
    RemoteHostLostError,
)
from batch_inference.ray._settings import autoscaling_with_target, replica_limits
from batch_inference.ray.serve import host_settings
from benchmarks.ray_local import netns_available

SUPPORT = Path(__file__).with_name("_ray_serve_support.py")
RUN_TIMEOUT_S = 240.0


# ---------------------------------------------------------------- the rule, without Ray
def test_max_ongoing_requests_leaves_room_for_a_running_and_a_forming_batch():
    limits = replica_limits(32)
    assert limits.max_ongoing_requests == 64
    assert limits.max_queue_size == 64
    assert limits.target_ongoing_requests == 32
    assert replica_limits(8, num_workers=3).max_ongoing_requests == 32


def test_max_ongoing_requests_below_the_batch_is_refused_naming_both():
    with pytest.raises(ConfigurationError, match=r"max_ongoing_requests=5 .*max_batch_size=32"):
        replica_limits(32, max_ongoing_requests=5)


def test_a_host_queue_smaller_than_what_serve_lets_in_is_refused():
    with pytest.raises(ConfigurationError, match=r"max_queue_size=10 .*max_ongoing_requests=64"):
        replica_limits(32, max_queue_size=10)


def test_an_autoscaling_target_that_no_replica_reaches_is_refused():
    with pytest.raises(ConfigurationError, match="target_ongoing_requests=100"):
        replica_limits(32, target_ongoing_requests=100)


@pytest.mark.parametrize("name, value", [("max_batch_size", 0), ("batches_in_flight", 1.5),
                                         ("max_ongoing_requests", True)])
def test_limits_must_be_positive_integers(name: str, value: Any):
    kwargs = {"max_batch_size": 4, name: value}
    with pytest.raises(ConfigurationError, match=f"{name} must be a positive integer"):
        replica_limits(**kwargs)


def test_autoscaling_target_is_filled_in_from_the_batch():
    limits = replica_limits(16)
    config = autoscaling_with_target({"min_replicas": 1, "max_replicas": 4}, limits)
    assert config == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 16}
    assert autoscaling_with_target(None, limits) is None


class Plain:
    def predict_batch(self, x):
        return x


@batching(batcher=BucketSeqBatcher(padding_tokens=[0], buckets=[8, 16]), max_batch_size=12,
          max_delay_s=0.004)
class Decorated:
    def predict_batch(self, x):
        return x


def test_a_batching_class_brings_its_settings_and_options_override_them():
    settings = host_settings(Decorated, {"max_delay_s": 0.01})
    assert isinstance(settings["batcher"], BucketSeqBatcher)
    assert settings["max_batch_size"] == 12
    assert settings["max_delay_s"] == 0.01
    assert host_settings(Plain, {"batcher": ConcatBatcher()})["max_batch_size"] == 32


def test_deployment_checks_settings_before_anything_runs():
    pytest.importorskip("ray.serve")
    from batch_inference.ray.serve import deployment

    with pytest.raises(ConfigurationError, match="max_ongoing_requests=4"):
        deployment(Plain, max_batch_size=8, max_ongoing_requests=4)
    with pytest.raises(ConfigurationError, match="max_batch_size"):
        deployment(Plain, max_batch_size=-1)
    with pytest.raises(ConfigurationError, match="model_obj"):
        deployment(Plain, model_obj=Plain())
    built = deployment(Decorated, num_replicas=2)
    assert built.max_ongoing_requests == 24  # 12 x (1 worker + 1)
    assert built.num_replicas == 2


def test_importing_the_package_does_not_import_ray():
    code = ("import sys, batch_inference, batch_inference.ray, batch_inference.ray._settings; "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "False"


def test_errors_raised_in_a_replica_reach_the_caller_as_their_own_type():
    pytest.importorskip("ray")
    from ray import exceptions as ray_errors

    from batch_inference.ray.serve import unwrap_error

    wrapped = ray_errors.RayTaskError("predict", "traceback", QueueFullError("full at 64"))
    wrapped = wrapped.as_instanceof_cause()
    assert type(unwrap_error(wrapped)) is QueueFullError
    lost = unwrap_error(ray_errors.ActorDiedError())
    assert isinstance(lost, RemoteHostLostError)
    assert isinstance(lost.__cause__, ray_errors.ActorDiedError)


# ---------------------------------------------------------------- a live deployment
@pytest.fixture(scope="module")
def live() -> dict[str, Any]:
    ok, why = netns_available()
    if not ok:
        pytest.skip(f"Ray runs only in a loopback-only network namespace: {why}")
    pytest.importorskip("ray.serve")
    from benchmarks.ray_local import run_isolated

    done = run_isolated([str(SUPPORT)], timeout_s=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])



@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
def test_ray_sees_only_loopback_and_no_socket_leaves_it(live):
    assert live["interfaces"] == ["lo"]
    assert live["sockets"]["problems"] == []
    assert live["sockets"]["count"] > 0  # the check saw Ray's sockets


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
def test_handle_and_http_answer_what_predict_batch_alone_gives(live):
    assert live["handle equal"] is True
    assert live["http equal"] is True
    status, body = live["http bad request"]
    assert status == 422 and body["error"] == "InvalidRequestError"


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
def test_typed_errors_cross_as_their_type(live):
    errors = live["errors"]
    assert errors["wrong argument count"]["type"] == "batch_inference.errors.InvalidRequestError"
    assert errors["model raises"] == {"type": "builtins.ValueError",
                                      "message": "negative input -1.0"}
    # What Ray alone gives: a RayTaskError subclass, which call() unwraps.
    assert live["raw handle error"]["type"] == "RayTaskError(InvalidRequestError)"
    assert InvalidRequestError.__name__ in live["raw handle error"]["type"]


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
def test_a_killed_replica_leaves_no_caller_hanging_and_serving_resumes(live):
    kill = live["kill"]
    assert kill["answered before the kill"] < kill["callers"]  # killed under load
    assert kill["hung"] == 0
    assert sum(kill["outcomes"].values()) == kill["callers"]
    assert set(kill["outcomes"]) <= {"result", "RemoteHostLostError", "RequestTimeoutError"}
    assert kill["served again after s"] is not None
    assert kill["killed"] not in kill["replicas after"]


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
def test_the_replicas_host_metrics_reach_rays_metrics_endpoint(live):
    metrics = live["ray metrics"]
    assert metrics["completed by stats"] > 0
    assert metrics["completed by Ray"] == metrics["completed by stats"]
    assert metrics["batches by Ray"] == metrics["batches by stats"]
    families = metrics["families"]
    assert families["ray_batch_inference_requests"] == "counter"
    assert families["ray_batch_inference_batches"] == "counter"
    assert families["ray_batch_inference_batch_size"] == "histogram"
    assert families["ray_batch_inference_queue_wait_seconds"] == "histogram"
    assert families["ray_batch_inference_queue_depth"] == "gauge"
    assert {"host", "replica", "reason", "outcome"} <= set(metrics["labels"])
