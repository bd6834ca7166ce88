"""``host.map``: a whole dataset through a host, in input order, one bounded window at a time.

The hosts' ``map`` and ``map_async`` are thin methods over :func:`map_requests`
and :func:`map_requests_async`. They use the host's public request API only
(``submit``, which returns a :class:`concurrent.futures.Future`, or an asyncio
task around ``predict_async``), so they work over any host with one:
:class:`~batch_inference.ModelHost` and :class:`~batch_inference.RemoteModelHost`
alike.

How a window goes through. The inputs are read lazily, at most ``window``
requests ahead of the result the caller waits for. Whenever half the window is
free, the free part is read at once, ordered so that a batcher sees neighbours
it can batch well (grouped by the batcher's key, then by length, the direction
alternating from one read to the next so that two reads meet at their long
ends) and submitted together; the scheduler then chooses batches among all of
them. Results come back in input order. At most ``window`` requests are out at
any time: queued, running, or done and waiting for an earlier one to be
yielded. Closing the generator cancels every request that has not started.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Hashable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any

from .batcher.base import Batcher
from .errors import ConfigurationError, HostBrokenError, HostNotRunningError

__all__ = ["DEFAULT_WINDOW_BATCHES", "map_requests", "map_requests_async"]

#: ``window=None`` reads this many batches of ``max_batch_size`` ahead.
DEFAULT_WINDOW_BATCHES = 16

#: ``submit(*args)``: one request sent; a ``concurrent.futures.Future`` or an asyncio task.
Submit = Callable[..., Any]
#: Errors after which the host takes no more requests: the map stops reading its inputs.
_HOST_GONE = (HostNotRunningError, HostBrokenError)


def check_window(window: int | None, max_batch_size: int) -> int:
    """The window in requests: ``window``, or :data:`DEFAULT_WINDOW_BATCHES` batches."""
    if window is None:
        return DEFAULT_WINDOW_BATCHES * max_batch_size
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ConfigurationError(f"window must be a positive integer or None, got {window!r}")
    return window


class _Window:
    """The requests a map has out, in input order, and how their results are handed back."""

    def __init__(self, submit: Submit, batcher: Batcher, window: int,
                 return_exceptions: bool, bar: Any) -> None:
        self.submit = submit
        self.batcher = batcher
        self.size = window
        self.return_exceptions = return_exceptions
        self.bar = bar
        # Concurrent futures (``submit``), or asyncio tasks (``map_async``), in input order.
        self.pending: deque[Any] = deque()
        self.end: BaseException | None = None  # raised once every earlier result is out
        self.exhausted = False
        self.ascending = True

    def wanted(self) -> int:
        """How many inputs to read now: the free part of the window once half is free."""
        if self.exhausted:
            return 0
        free = self.size - len(self.pending)
        return free if free >= max(1, self.size // 2) else 0

    def add(self, rows: list[tuple[Any, ...]], wanted: int, error: BaseException | None) -> None:
        """Submit ``rows`` (just read; fewer than ``wanted`` when the inputs ended or raised)."""
        if error is not None or len(rows) < wanted:
            self.exhausted = True
            self.end = error
        futures: list[Any] = [None] * len(rows)
        for index in self._order(rows, futures):
            if self.end is not None and isinstance(self.end, _HOST_GONE):
                futures[index] = _failed(self.end)  # the host is gone: nothing more is sent
                continue
            try:
                futures[index] = self.submit(*rows[index])
            except Exception as failure:  # this request's own outcome, in its place
                futures[index] = _failed(failure)
                if isinstance(failure, _HOST_GONE):
                    self.exhausted = True
                    self.end = failure
        self.pending.extend(futures)  # every slot is filled above

    def _order(self, rows: list[tuple[Any, ...]], futures: list[Any]) -> list[int]:
        """Indices of ``rows`` grouped by the batcher's key, sorted by length within a group.

        A request the batcher refuses gets its error in ``futures`` and is left out.
        """
        groups: dict[Hashable, list[tuple[int, int]]] = {}
        for index, args in enumerate(rows):
            try:
                info = self.batcher.inspect(args)
            except Exception as failure:
                futures[index] = _failed(failure)
                continue
            groups.setdefault(info.key, []).append((info.length, index))
        order: list[int] = []
        for members in groups.values():
            members.sort(key=lambda item: item[0], reverse=not self.ascending)
            order.extend(index for _, index in members)
        self.ascending = not self.ascending
        return order

    def outcome(self, future: Any) -> Any:
        """``future``'s result, or its exception (returned or raised, as the map was asked)."""
        try:
            result = future.result()  # done: the caller waited for it
        except Exception as error:
            if isinstance(error, _HOST_GONE):  # e.g. the host stopped: send nothing more
                self.exhausted = True
                self.end = self.end or error
            if not self.return_exceptions:
                raise
            result = error
        if self.bar is not None:
            self.bar.update()
        return result

    def close(self) -> None:
        """Cancel every request that has not started (a running batch finishes)."""
        while self.pending:
            future = self.pending.popleft()
            if not future.cancel() and future.done() and not future.cancelled():
                future.exception()  # retrieved: a task's error is not reported as lost
        if self.bar is not None:
            self.bar.close()


def _failed(error: BaseException) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_exception(error)
    return future


def _read(rows: Iterator[tuple[Any, ...]], count: int) -> tuple[list[tuple[Any, ...]], Any]:
    """Up to ``count`` rows; an exception the inputs raised is returned beside them."""
    read: list[tuple[Any, ...]] = []
    try:
        for _ in range(count):
            read.append(next(rows))
    except StopIteration:
        pass
    except Exception as error:
        return read, error
    return read, None


def _progress_bar(enabled: bool, iterables: tuple[Any, ...], desc: str) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ConfigurationError(
            "progress=True needs tqdm, which is not installed: pip install tqdm "
            "(or the 'bench' extra)"
        ) from None
    lengths = [len(it) for it in iterables if hasattr(it, "__len__")]
    total = min(lengths) if len(lengths) == len(iterables) else None
    return tqdm(total=total, desc=desc, unit="item", dynamic_ncols=True)


def _prepare(submit: Submit, batcher: Batcher, iterables: tuple[Any, ...], window: int | None,
             max_batch_size: int, return_exceptions: bool, progress: bool) -> _Window:
    if not iterables:
        raise ConfigurationError("map needs at least one iterable (one per predict argument)")
    size = check_window(window, max_batch_size)
    bar = _progress_bar(progress, iterables, "map")
    return _Window(submit, batcher, size, bool(return_exceptions), bar)


def map_requests(submit: Submit, batcher: Batcher, iterables: tuple[Iterable[Any], ...], *,
                 window: int | None, max_batch_size: int, return_exceptions: bool = False,
                 progress: bool = False) -> Iterator[Any]:
    """The generator behind ``host.map``; the settings are checked here, at the call.

    Parameters
    ----------
    submit:
        ``submit(*args) -> Future`` of one request (the host's ``submit``).
    batcher:
        The host's batcher: its ``inspect`` orders each read (key, then length).
    iterables:
        The ``i``-th items of the iterables are the ``i``-th request's arguments.
    window, max_batch_size:
        Most requests out at once (``None``: :data:`DEFAULT_WINDOW_BATCHES` x
        ``max_batch_size``).
    return_exceptions, progress:
        As for :meth:`batch_inference.ModelHost.map`.
    """
    state = _prepare(submit, batcher, iterables, window, max_batch_size,
                     return_exceptions, progress)
    return _generate(state, zip(*iterables))


def _generate(state: _Window, rows: Iterator[tuple[Any, ...]]) -> Iterator[Any]:
    try:
        while True:
            wanted = state.wanted()
            if wanted:
                read, error = _read(rows, wanted)
                state.add(read, wanted, error)
                continue
            if not state.pending:
                if state.end is not None:
                    raise state.end
                return
            state.pending[0].exception()  # wait for the oldest (its outcome is handled below)
            yield state.outcome(state.pending.popleft())
    finally:
        state.close()


def map_requests_async(submit: Submit, batcher: Batcher, iterables: tuple[Any, ...], *,
                       window: int | None, max_batch_size: int, return_exceptions: bool = False,
                       progress: bool = False) -> AsyncIterator[Any]:
    """The async generator behind ``host.map_async``: :func:`map_requests` for asyncio.

    ``submit(*args)`` returns an asyncio task (e.g. around ``predict_async``),
    made in the running loop; tasks start in the order they are made, so a
    read reaches the queue in the order chosen for the batcher.

    Each iterable may be a plain or an asynchronous iterable. Waiting for a
    result never blocks the event loop; cancelling the task that iterates, or
    closing the generator (``aclose``), cancels every request not started.
    """
    state = _prepare(submit, batcher, iterables, window, max_batch_size,
                     return_exceptions, progress)
    return _generate_async(state, _zip_async(iterables))


async def _generate_async(
    state: _Window, rows: AsyncIterator[tuple[Any, ...]]
) -> AsyncIterator[Any]:
    try:
        while True:
            wanted = state.wanted()
            if wanted:
                read, error = await _read_async(rows, wanted)
                state.add(read, wanted, error)
                continue
            if not state.pending:
                if state.end is not None:
                    raise state.end
                return
            oldest = state.pending[0]
            if not oldest.done():  # a task (a refused request's future is done already)
                await asyncio.wait([oldest])  # its outcome is handled below
            yield state.outcome(state.pending.popleft())
    finally:
        state.close()


async def _zip_async(iterables: tuple[Any, ...]) -> AsyncIterator[tuple[Any, ...]]:
    """``zip`` over plain and asynchronous iterables alike."""
    iterators = [(it.__aiter__(), True) if hasattr(it, "__aiter__") else (iter(it), False)
                 for it in iterables]
    while True:
        row = []
        for iterator, is_async in iterators:
            try:
                row.append(await anext(iterator) if is_async else next(iterator))
            except (StopIteration, StopAsyncIteration):
                return
        yield tuple(row)


async def _read_async(rows: AsyncIterator[tuple[Any, ...]], count: int) -> tuple[list[Any], Any]:
    """:func:`_read` for an asynchronous iterator."""
    read: list[tuple[Any, ...]] = []
    try:
        for _ in range(count):
            read.append(await anext(rows))
    except StopAsyncIteration:
        pass
    except Exception as error:
        return read, error
    return read, None
