"""Models and process bodies for the remote tests (importable by "spawn" children)."""

from __future__ import annotations

import os
import threading
from typing import Any

import torch

from batch_inference.batcher.concat_batcher import ConcatBatcher
from batch_inference.remote import RemoteModelHost

GATE_TIMEOUT_S = 60.0


class Doubler:
    """``x * 2``; a negative input raises ``ValueError`` naming it."""

    def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x < 0).any()):
            raise ValueError(f"negative input {x.min().item()}")
        return x * 2


class PidModel:
    """Each row gets the serving process's pid (tells which process served)."""

    def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 1), os.getpid(), dtype=torch.int64)


class Gated:
    """``x * 2``; the first call sets ``entered`` and blocks until ``release`` is set.

    ``entered``/``release`` are ``threading`` or ``multiprocessing`` events;
    ``calls`` records the rows of every call (in the serving process).
    """

    def __init__(self, entered: Any, release: Any) -> None:
        self.entered = entered
        self.release = release
        self.calls: list[torch.Tensor] = []
        self._lock = threading.Lock()

    def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
        with self._lock:
            self.calls.append(x.clone())
            first = len(self.calls) == 1
        if first:
            self.entered.set()
            self.release.wait(GATE_TIMEOUT_S)
        return x * 2


def remote(model_cls: type, port: int, *model_args: Any, **options: Any) -> RemoteModelHost:
    """A RemoteModelHost with a pure ConcatBatcher and no batching delay."""
    options.setdefault("wait_ms", 0)
    host = RemoteModelHost(model_cls, port, ConcatBatcher(tensor="pt"), **options)
    return host(*model_args)


# ---------------------------------------------------------------- spawn children
def serve_gated(port: int, entered: Any, release: Any, ready: Any, done: Any) -> None:
    """Serve ``Gated`` on ``port`` until ``done`` is set (or be killed)."""
    host = remote(Gated, port, entered, release).start()
    assert host.is_server
    ready.set()
    done.wait(GATE_TIMEOUT_S)
    host.stop(timeout=10)


def client_calls(port: int, n_calls: int, sent: Any, results: Any) -> None:
    """Start ``n_calls`` calls at once; put ``(kind, type name)`` of each outcome on ``results``."""
    host = remote(Doubler, port).start()
    assert not host.is_server
    futures = [host.submit(torch.ones(1, 2)) for _ in range(n_calls)]
    sent.set()
    for future in futures:
        try:
            future.result(GATE_TIMEOUT_S)
            results.put(("ok", ""))
        except BaseException as error:  # noqa: BLE001 - reported to the parent
            results.put(("error", type(error).__name__))
    host.stop(timeout=1)


def start_at_once(port: int, barrier: Any, results: Any, done: Any) -> None:
    """Start together with the others; report ``(is_server, served_by_pid, own pid)``."""
    host = remote(PidModel, port)
    barrier.wait(GATE_TIMEOUT_S)
    host.start()
    served_by = int(host.predict(torch.zeros(1, 1))[0, 0])
    results.put((host.is_server, served_by, os.getpid()))
    done.wait(GATE_TIMEOUT_S)  # the server stays until every process has its answer
    host.stop(timeout=10)
