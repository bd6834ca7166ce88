"""Run the embedding app (:mod:`.http_app`) under uvicorn in a subprocess, on a Unix socket.

:class:`UvicornServer` starts ``python -m uvicorn --factory ... --uds PATH
--workers N`` with the socket in a private temporary directory (mode 0700:
only this OS user can connect, nothing listens on the network; the sockets of
variant ``"remote"``'s shared host live there too, so no other server on the
machine can share them), waits until
every worker process has run its lifespan, and stops the whole process group
when it leaves its ``with`` block, however it leaves it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

from batch_inference.errors import BatchInferenceError, ConfigurationError

from .http_app import SETTINGS_VARIABLE, ServeSettings

__all__ = ["ServerStartError", "UvicornServer"]

_APP = "benchmarks.http_app:app_from_env"
#: Where :class:`~batch_inference.RemoteModelHost` puts its sockets (see ``remote/_election``).
RUNTIME_DIR_VARIABLE = "BATCH_INFERENCE_RUNTIME_DIR"
#: Seconds uvicorn keeps an idle connection open (its default, 5, is shorter than a page's pauses).
KEEP_ALIVE_S = 600


class ServerStartError(BatchInferenceError, RuntimeError):
    """The server process exited, or did not become ready in time (the message quotes its log)."""


class UvicornServer:
    """One uvicorn server (``workers`` processes) of the embedding app, on a Unix socket.

    Use ``with UvicornServer(...) as server:`` (starts and waits), or
    :meth:`start` then :meth:`wait_ready` to start several servers at once.
    ``server.uds`` is the socket's path, for ``httpx.AsyncHTTPTransport(uds=...)``.

    Parameters
    ----------
    settings:
        The app's settings (its ``ready_dir`` is set here).
    workers:
        uvicorn worker processes; each one runs the app's lifespan.
    start_timeout_s:
        :meth:`wait_ready` fails after this long.
    stop_timeout_s:
        :meth:`stop` waits this long for a graceful exit, then kills the group.
    env:
        Extra environment variables of the server processes (e.g.
        ``{"OMP_WAIT_POLICY": "PASSIVE"}``), over this process's environment.
    app:
        The app factory uvicorn starts (``module:function``); it reads
        ``settings.to_json()`` from ``$BATCH_INFERENCE_HTTP_SETTINGS``
        (default: the embedding app, whose settings are a :class:`ServeSettings`;
        another app's settings are a dataclass with ``ready_dir``, ``variant``
        and ``to_json()`` too).
    """

    def __init__(
        self,
        settings: ServeSettings,
        workers: int = 1,
        start_timeout_s: float = 120.0,
        stop_timeout_s: float = 30.0,
        env: dict[str, str] | None = None,
        app: str = _APP,
    ) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigurationError(f"workers must be an integer >= 1, got {workers!r}")
        for name, value in (("start_timeout_s", start_timeout_s),
                            ("stop_timeout_s", stop_timeout_s)):
            if not value > 0:
                raise ConfigurationError(f"{name} must be > 0, got {value!r}")
        self.settings = settings
        self.workers = workers
        self.start_timeout_s = float(start_timeout_s)
        self.stop_timeout_s = float(stop_timeout_s)
        self.env = dict(env or {})
        self.app = app
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self.uds = ""

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def worker_pids(self) -> list[int]:
        """The process ids of the workers whose lifespan has started (and not ended)."""
        if self._tmp is None:
            return []
        return sorted(int(p.name) for p in (Path(self._tmp.name) / "ready").iterdir())

    def start(self) -> UvicornServer:
        """Start the server process (it loads the model in the background); return at once."""
        if self._process is not None:
            raise ConfigurationError("this UvicornServer was started already")
        self._tmp = tempfile.TemporaryDirectory(prefix="bi-http-")
        root = Path(self._tmp.name)
        root.chmod(0o700)
        ready = root / "ready"
        ready.mkdir()
        shared = root / "remote"  # variant "remote": its hosts' sockets, ours alone
        shared.mkdir(mode=0o700)
        self.uds = str(root / "app.sock")
        settings = replace(self.settings, ready_dir=str(ready))
        env = {**os.environ, **self.env}
        env[SETTINGS_VARIABLE] = settings.to_json()
        env[RUNTIME_DIR_VARIABLE] = str(shared)
        package_root = str(Path(__file__).resolve().parents[1])  # benchmarks, batch_inference
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        self._log = open(root / "server.log", "wb")  # noqa: SIM115 - closed in stop()
        # Keep idle connections open past the page's pauses: a page keeps one client per
        # server while the other servers' rounds run, and with uvicorn's default (5 s) a
        # request sent as the server closes the idle connection fails with "Server
        # disconnected without sending a response" (it did, once, in a docs build).
        command = [sys.executable, "-m", "uvicorn", "--factory", self.app, "--uds", self.uds,
                   "--workers", str(self.workers), "--log-level", "warning", "--no-access-log",
                   "--timeout-keep-alive", str(KEEP_ALIVE_S)]
        self._process = subprocess.Popen(command, env=env, stdout=self._log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait_ready(self) -> UvicornServer:
        """Return once every worker has started its lifespan; else stop and raise.

        Raises
        ------
        ServerStartError
            The process exited, or was not ready within ``start_timeout_s``.
        """
        if self._process is None or self._tmp is None:
            raise ConfigurationError("start() the server before wait_ready()")
        ready = Path(self._tmp.name) / "ready"
        deadline_s = time.monotonic() + self.start_timeout_s
        while len(list(ready.iterdir())) < self.workers or not Path(self.uds).exists():
            if time.monotonic() >= deadline_s:
                self._fail(f"not ready within start_timeout_s={self.start_timeout_s}")
            try:
                code = self._process.wait(timeout=0.05)  # the pause between checks
            except subprocess.TimeoutExpired:
                continue
            self._fail(f"exited with code {code} before it was ready")
        return self

    def _fail(self, why: str) -> NoReturn:
        log = self.log_text()
        self.stop()
        raise ServerStartError(f"uvicorn server ({self.settings.variant}, "
                               f"{self.workers} workers) {why}; its log ends:\n{log[-2000:]}")

    def log_text(self) -> str:
        """What the server has written to stdout and stderr so far."""
        if self._tmp is None:
            return ""
        path = Path(self._tmp.name) / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL to its group after ``stop_timeout_s``).

        Idempotent; returns once the process has exited and its files are gone.
        """
        process, self._process = self._process, None
        if process is not None:
            try:
                if process.poll() is None:
                    process.terminate()  # uvicorn shuts down gracefully: lifespan ends
                    try:
                        process.wait(timeout=self.stop_timeout_s)
                    except subprocess.TimeoutExpired:
                        os.killpg(process.pid, signal.SIGKILL)
                        process.wait(timeout=self.stop_timeout_s)
            finally:
                self._kill_group_leftovers(process.pid)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    @staticmethod
    def _kill_group_leftovers(group: int) -> None:
        """Kill what is left of the server's own process group (workers of a killed parent)."""
        try:
            os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # the group is gone: every process of it has exited

    def __enter__(self) -> UvicornServer:
        self.start()
        try:
            return self.wait_ready()
        except BaseException:  # interrupted while waiting: leave nothing running
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
