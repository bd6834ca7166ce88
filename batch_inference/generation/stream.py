"""One caller's tokens as they are generated: a thread iterator and an async iterator.

The worker appends tokens with :func:`publish` (one lock per stream, one
``call_soon_threadsafe`` per event loop and step) and ends a stream with
:meth:`TokenStream._close` once its request's future is settled. The caller
reads the stream from any thread (``for token in stream``), from asyncio
(``async for token in stream``), or waits for the whole completion
(:meth:`TokenStream.result`, ``await stream``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from concurrent.futures import CancelledError
from typing import Any

__all__ = ["TokenStream"]

#: ``(loop, waiter)``: an asyncio reader waiting for the next token or the end.
_Waiter = tuple[asyncio.AbstractEventLoop, asyncio.Future]


class TokenStream:
    """The tokens generated for one prompt, readable while they are generated.

    Iterating yields every generated token once, in order, then stops; when the
    request failed (deadline, stop, model error) the iteration raises that error
    after the tokens that were generated; when it was cancelled it just stops.
    Several readers may iterate the same stream; each sees every token.

    Attributes
    ----------
    prompt:
        The prompt's token ids.
    max_new_tokens:
        Most tokens this request generates.
    queued_s:
        ``time.monotonic()`` when the request was queued.
    deadline_s:
        ``time.monotonic()`` deadline of the request, or ``None``.
    first_token_s, finished_s:
        ``time.monotonic()`` of its first token and of its end (``None`` until then).
    """

    def __init__(
        self,
        prompt: list[int],
        max_new_tokens: int,
        future: Any,
        queued_s: float,
        deadline_s: float | None = None,
    ) -> None:
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.queued_s = queued_s
        self.deadline_s = deadline_s
        self.finished_s: float | None = None
        self._future = future  # the request's concurrent.futures.Future
        self._tokens: list[int] = []
        self._done = False
        self._changed = threading.Condition(threading.Lock())
        self._waiters: list[_Waiter] = []  # async readers: woken by every token and the end
        self._end_waiters: list[_Waiter] = []  # awaiting the whole completion: by the end only
        self._cancel: Callable[[], None] = lambda: None
        self.cancel_requested = False
        self.first_token_s: float | None = None

    # ------------------------------------------------------------------ caller side
    @property
    def tokens(self) -> list[int]:
        """A copy of the tokens generated so far."""
        with self._changed:
            return list(self._tokens)

    def __len__(self) -> int:
        """Tokens generated so far."""
        return len(self._tokens)

    def done(self) -> bool:
        """Whether the stream has ended (completed, failed or cancelled)."""
        return self._done

    def cancelled(self) -> bool:
        """Whether the request ended because its caller cancelled it."""
        return self._future.cancelled() or isinstance(self._exception(), CancelledError)

    def cancel(self) -> None:
        """Stop generating: a queued request is dropped, a running row leaves at the next step.

        The stream then ends (its tokens so far stay readable); :meth:`result`
        raises :class:`concurrent.futures.CancelledError`. Cancelling a finished
        stream does nothing.
        """
        self.cancel_requested = True
        self._cancel()

    def result(self, timeout: float | None = None) -> list[int]:
        """The whole completion (generated tokens, prompt excluded).

        Raises ``TimeoutError`` when it is not done within ``timeout`` seconds,
        and the request's error when it failed.
        """
        return self._future.result(timeout)

    def iter(self, timeout: float | None = None) -> Generator[int, None, None]:
        """The tokens as they come; ``TimeoutError`` when none comes within ``timeout`` s."""
        index = 0
        while True:
            with self._changed:
                deadline_s = None if timeout is None else time.monotonic() + timeout
                while index >= len(self._tokens) and not self._done:
                    left = None if deadline_s is None else deadline_s - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError(f"no token within timeout={timeout!r} s")
                    self._changed.wait(left)
                fresh = self._tokens[index:]
                ended = self._done
            index += len(fresh)
            yield from fresh
            if ended and not fresh:
                self._raise_outcome()
                return

    def __iter__(self) -> Iterator[int]:
        return self.iter()

    async def _aiter(self) -> AsyncIterator[int]:
        loop = asyncio.get_running_loop()
        index = 0
        while True:
            with self._changed:
                fresh = self._tokens[index:]
                ended = self._done
                waiter = None
                if not fresh and not ended:
                    waiter = loop.create_future()
                    self._waiters.append((loop, waiter))
            if waiter is not None:
                try:
                    await waiter
                except asyncio.CancelledError:
                    self._forget(waiter)
                    raise
                continue
            index += len(fresh)
            for token in fresh:
                yield token
            if ended and not fresh:
                self._raise_outcome()
                return

    def __aiter__(self) -> AsyncIterator[int]:
        return self._aiter()

    def __await__(self) -> Generator[Any, None, list[int]]:
        return self._wait_async().__await__()

    async def _wait_async(self) -> list[int]:
        loop = asyncio.get_running_loop()
        while True:
            with self._changed:
                if self._done:
                    break
                waiter = loop.create_future()
                self._end_waiters.append((loop, waiter))
            try:
                await waiter
            except asyncio.CancelledError:
                self._forget(waiter)
                self.cancel()  # the awaiting task was cancelled: its row leaves at the next step
                raise
        return self.result(0)

    def _forget(self, waiter: asyncio.Future) -> None:
        with self._changed:
            self._waiters = [w for w in self._waiters if w[1] is not waiter]
            self._end_waiters = [w for w in self._end_waiters if w[1] is not waiter]

    def _exception(self) -> BaseException | None:
        future = self._future
        if not future.done() or future.cancelled():
            return None
        return future.exception()

    def _raise_outcome(self) -> None:
        if self._future.cancelled():
            return
        error = self._exception()
        if error is not None and not isinstance(error, CancelledError):
            raise error

    # ------------------------------------------------------------------ worker side
    def _take_waiters(self) -> list[_Waiter]:
        """Hand the waiting async readers to the caller (locked by the caller)."""
        waiters, self._waiters = self._waiters, []
        return waiters

    def _close(self) -> None:
        """End the stream (its future is settled): wake every reader."""
        with self._changed:
            self.finished_s = time.monotonic()
            self._done = True
            self._changed.notify_all()
            waiters = self._take_waiters() + self._end_waiters
            self._end_waiters = []
        _wake(waiters)


def publish(items: list[tuple[TokenStream, int]]) -> None:
    """Append one token to each stream and wake its readers (one wake-up per loop)."""
    waiters: list[_Waiter] = []
    now_s = time.monotonic()
    for stream, token in items:
        with stream._changed:
            if stream.first_token_s is None:
                stream.first_token_s = now_s
            stream._tokens.append(token)
            stream._changed.notify_all()
            if stream._waiters:
                waiters.extend(stream._take_waiters())
    _wake(waiters)


def _wake(waiters: list[_Waiter]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future]] = {}
    for loop, waiter in waiters:
        by_loop.setdefault(loop, []).append(waiter)
    for loop, futures in by_loop.items():
        try:
            loop.call_soon_threadsafe(_set_all, futures)
        except RuntimeError:  # that reader's loop is closed: nobody waits there any more
            pass


def _set_all(futures: list[asyncio.Future]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)
