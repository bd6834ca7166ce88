"""A self-pipe that wakes an I/O thread blocked in ``zmq.Poller.poll`` from any thread."""

from __future__ import annotations

import os

__all__ = ["Wakeup"]


class Wakeup:
    """``set()`` from any thread makes ``fd`` readable until ``clear()``.

    Only the first ``set()`` after a ``clear()`` writes to the pipe, so a busy
    producer pays one attribute read per item. The owner calls ``clear()``
    *before* it drains its queues: an item added after that point sets it again.
    """

    def __init__(self) -> None:
        self.fd, self._write_fd = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._write_fd, False)
        self._armed = False

    def set(self) -> None:
        if not self._armed:
            self._armed = True
            try:
                os.write(self._write_fd, b"\0")
            except (BlockingIOError, OSError):
                pass  # the pipe is full (so readable) or closed (the owner is gone)

    def clear(self) -> None:
        self._armed = False
        try:
            while os.read(self.fd, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        for fd in (self.fd, self._write_fd):
            try:
                os.close(fd)
            except OSError:
                pass
