"""Where a port's socket and lock live, and which host serves it.

Both live in a private directory (mode 0700, owned by this user): only the
same OS user can reach the socket. The directory is
``$XDG_RUNTIME_DIR/batch_inference`` when that variable names a directory, else
``<tempdir>/batch_inference-<uid>``; ``BATCH_INFERENCE_RUNTIME_DIR`` overrides
both (tests use it). An existing directory is used only if it is a real
directory (not a link), owned by this user, and closed to group and others.

Exactly one host serves a port: the one holding an exclusive ``flock`` on the
port's lock file. ``flock`` locks belong to an open file description, so two
``open()`` of the same file conflict even within one process, and the kernel
drops the lock when its holder dies, so a new server can take over.
"""

from __future__ import annotations

import fcntl
import os
import stat
import tempfile
from pathlib import Path

from ..errors import ConfigurationError

__all__ = ["runtime_dir", "socket_path", "ServerLock", "check_port"]

_ENV_DIR = "BATCH_INFERENCE_RUNTIME_DIR"


def check_port(port: object) -> int:
    """A valid port number (it names the socket); refuses anything else."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigurationError(f"grpc_port must be an integer in 1..65535, got {port!r}")
    return port


def runtime_dir() -> Path:
    """The private directory, created (0700) if missing and verified before use."""
    override = os.environ.get(_ENV_DIR)
    if override:
        path = Path(override)
    else:
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        if xdg and os.path.isdir(xdg):
            path = Path(xdg) / "batch_inference"
        else:
            path = Path(tempfile.gettempdir()) / f"batch_inference-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, parents=False)
    except FileExistsError:
        pass
    except FileNotFoundError:
        raise ConfigurationError(f"cannot create the runtime directory {str(path)!r}") from None
    _verify_private(path)
    return path


def _verify_private(path: Path) -> None:
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigurationError(f"runtime directory {str(path)!r} is not a directory (a link?)")
    if info.st_uid != os.getuid():
        raise ConfigurationError(
            f"runtime directory {str(path)!r} is owned by uid {info.st_uid}, not {os.getuid()}"
        )
    if info.st_mode & 0o077:
        raise ConfigurationError(
            f"runtime directory {str(path)!r} has mode {stat.S_IMODE(info.st_mode):o}; "
            "it must be closed to group and others (0700)"
        )


#: Longest Unix socket path the kernel takes (``sun_path`` is 108 bytes, with its NUL).
MAX_SOCKET_PATH = 107


def socket_path(port: int) -> Path:
    """The Unix socket that port ``port`` names."""
    path = runtime_dir() / f"port-{check_port(port)}.sock"
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ConfigurationError(
            f"the socket path {str(path)!r} is longer than {MAX_SOCKET_PATH} bytes: "
            "set BATCH_INFERENCE_RUNTIME_DIR to a shorter private directory"
        )
    return path


class ServerLock:
    """The exclusive lock that makes its holder the one server of a port."""

    def __init__(self, port: int) -> None:
        self.path = runtime_dir() / f"port-{check_port(port)}.lock"
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; never waits."""
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
