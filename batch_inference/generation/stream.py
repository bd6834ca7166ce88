"""One caller's tokens as they are generated: a thread iterator and an async iterator.

The worker writes a request's ``StreamState`` (see ``_stream_state.py``); the
caller holds its :class:`TokenStream`, which reads it from any thread (``for
token in stream``), from asyncio (``async for token in stream``), or waits for
the whole completion (:meth:`TokenStream.result`, ``await stream``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from concurrent.futures import CancelledError
from typing import Any

from ._stream_state import StreamState

__all__ = ["TokenStream"]


class TokenStream:
    """The tokens generated for one prompt, readable while they are generated.

    Iterating yields every generated token once, in order, then stops; when the
    request failed (deadline, stop, model error) the iteration raises that error
    after the tokens that were generated; when it was cancelled it just stops.
    Several readers may iterate the same stream; each sees every token.

    The request is cancelled (its row leaves the running batch at the next
    step) by :meth:`cancel`, by cancelling an asyncio task that iterates or
    awaits the stream, by a reader's ``iter(timeout=...)`` running out, and
    when the stream is garbage collected before it ended (nobody can read it
    any more: e.g. a ``for token in host.stream(...)`` loop left with
    ``break``). Leaving a loop early while still holding the stream does not
    cancel it: another reader, or :meth:`result`, may still want the rest.

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

    def __init__(self, state: StreamState, cancel: Callable[[], None] = lambda: None) -> None:
        self._state = state
        self._cancel = cancel

    def __del__(self) -> None:
        # Only a flag (no lock): this may run in any thread, at any point of the
        # cyclic garbage collector. The worker drops the row at its next step boundary.
        state = getattr(self, "_state", None)
        if state is not None and not state._done:
            state.cancel_requested = True

    # ------------------------------------------------------------------ attributes
    @property
    def prompt(self) -> list[int]:
        return self._state.prompt

    @property
    def max_new_tokens(self) -> int:
        return self._state.max_new_tokens

    @property
    def queued_s(self) -> float:
        return self._state.queued_s

    @property
    def deadline_s(self) -> float | None:
        return self._state.deadline_s

    @property
    def first_token_s(self) -> float | None:
        return self._state.first_token_s

    @property
    def finished_s(self) -> float | None:
        return self._state.finished_s

    @property
    def cancel_requested(self) -> bool:
        """Whether the request was asked to stop (by any of the ways listed above)."""
        return self._state.cancel_requested

    @property
    def tokens(self) -> list[int]:
        """A copy of the tokens generated so far."""
        return self._state.tokens

    def __len__(self) -> int:
        """Tokens generated so far."""
        return len(self._state._tokens)

    # ------------------------------------------------------------------ outcome
    def done(self) -> bool:
        """Whether the stream has ended (completed, failed or cancelled)."""
        return self._state._done

    def cancelled(self) -> bool:
        """Whether the request ended because its caller cancelled it."""
        return self._state._future.cancelled() or isinstance(self._exception(), CancelledError)

    def cancel(self) -> None:
        """Stop generating: a queued request is dropped, a running row leaves at the next step.

        The stream then ends (its tokens so far stay readable); :meth:`result`
        raises :class:`concurrent.futures.CancelledError`. Cancelling a finished
        stream does nothing.
        """
        if self._state._done:
            return
        self._state.cancel_requested = True
        self._cancel()

    def result(self, timeout: float | None = None) -> list[int]:
        """The whole completion (generated tokens, prompt excluded).

        Raises ``TimeoutError`` when it is not done within ``timeout`` seconds
        (the request goes on), and the request's error when it failed.
        """
        return self._state._future.result(timeout)

    # ------------------------------------------------------------------ readers
    def iter(self, timeout: float | None = None) -> Generator[int, None, None]:
        """The tokens as they come.

        ``TimeoutError`` when none comes within ``timeout`` seconds: the reader
        gave up, so the request is cancelled.
        """
        state = self._state
        index = 0
        while True:
            with state._changed:
                deadline_s = None if timeout is None else time.monotonic() + timeout
                while index >= len(state._tokens) and not state._done:
                    left = None if deadline_s is None else deadline_s - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    state._sleepers += 1
                    try:
                        state._changed.wait(left)
                    finally:
                        state._sleepers -= 1
                fresh = state._tokens[index:]
                ended = state._done
            if not fresh and not ended:
                self.cancel()
                raise TimeoutError(f"no token within timeout={timeout!r} s")
            index += len(fresh)
            yield from fresh
            if ended and not fresh:
                self._raise_outcome()
                return

    def __iter__(self) -> Iterator[int]:
        return self.iter()

    async def _aiter(self) -> AsyncIterator[int]:
        state = self._state
        loop = asyncio.get_running_loop()
        index = 0
        while True:
            with state._changed:
                fresh = state._tokens[index:]
                ended = state._done
                waiter = None
                if not fresh and not ended:
                    waiter = loop.create_future()
                    state._waiters.append((loop, waiter))
            if waiter is not None:
                try:
                    await waiter
                except asyncio.CancelledError:
                    self._forget(waiter)
                    self.cancel()  # the reading task was cancelled (or timed out)
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
        state = self._state
        loop = asyncio.get_running_loop()
        while True:
            with state._changed:
                if state._done:
                    break
                waiter = loop.create_future()
                state._end_waiters.append((loop, waiter))
            try:
                await waiter
            except asyncio.CancelledError:
                self._forget(waiter)
                self.cancel()  # the awaiting task was cancelled: its row leaves at the next step
                raise
        return self.result(0)

    def _forget(self, waiter: asyncio.Future) -> None:
        state = self._state
        with state._changed:
            state._waiters = [w for w in state._waiters if w[1] is not waiter]
            state._end_waiters = [w for w in state._end_waiters if w[1] is not waiter]

    def _exception(self) -> BaseException | None:
        future = self._state._future
        if not future.done() or future.cancelled():
            return None
        return future.exception()

    def _raise_outcome(self) -> None:
        if self._state._future.cancelled():
            return
        error = self._exception()
        if error is not None and not isinstance(error, CancelledError):
            raise error
