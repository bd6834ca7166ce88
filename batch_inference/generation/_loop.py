"""The decoding loop: one thread owns the model and the running batch.

Each turn of the loop is one *step boundary*: rows whose caller cancelled,
whose deadline passed, or whose host is stopping leave; waiting requests join
(prefilled together, their state concatenated to the running batch's; with
``policy="static"`` only once the running batch is empty); then one step feeds
every row its latest token. A prefill costs about a step, so with a running
batch, waiting requests join once ``min_join_rows`` rows are free, or once
they have waited ``max_join_delay_steps`` steps, whichever comes first (with
an empty batch they start at once). A row leaves the moment it produced EOS or its
own ``max_new_tokens``. The loop never waits while it has rows to decode; with
none it blocks on the queue until a request comes or the queue closes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import CancelledError
from typing import Literal

from .._checks import timeout_message
from .._queue import RequestQueue, oldest
from .._request import Request, settle
from ..errors import HostStoppedError, RequestTimeoutError
from ._sampling import next_tokens
from ._stream_state import StreamState, publish
from .protocol import RunningBatch, StepModel
from .stats import GenerationRecorder

#: ``continuous``: requests join at every step boundary; ``static``: only when the batch is empty.
Policy = Literal["continuous", "static"]


def stream_of(request: Request) -> StreamState:
    """The :class:`StreamState` a generation request carries as its one argument."""
    return request.args[0]


class DecodeLoop:
    """The running batch and the loop that advances it (run on the host's worker thread).

    Parameters
    ----------
    model:
        The :class:`~batch_inference.generation.protocol.StepModel`.
    queue:
        Where requests wait; the loop ends once it is closed and empty and no
        row is left.
    recorder:
        Where counts and latencies go.
    max_batch_size:
        Most rows decoded together.
    policy:
        ``"continuous"`` or ``"static"`` (see the module docstring).
    eos_token_id:
        A row that produces it finishes (the token is part of its completion).
    min_join_rows, max_join_delay_steps:
        When waiting requests join a running batch (see the module docstring).
    on_break:
        Called with a ``BaseException`` raised by the model (the loop then ends).
    """

    def __init__(
        self,
        model: StepModel,
        queue: RequestQueue,
        recorder: GenerationRecorder,
        max_batch_size: int,
        policy: Policy,
        eos_token_id: int | None,
        on_break: Callable[[BaseException, list[Request]], None],
        min_join_rows: int = 1,
        max_join_delay_steps: int = 0,
    ) -> None:
        self.model = model
        self.queue = queue
        self.recorder = recorder
        self.max_batch_size = max_batch_size
        self.policy = policy
        self.eos_token_id = eos_token_id
        self.on_break = on_break
        self.min_join_rows = min_join_rows
        self.max_join_delay_steps = max_join_delay_steps
        self._deferred_steps = 0  # steps that requests waited while rows were free
        #: Set by ``stop(cancel_pending=True)``: running rows get HostStoppedError.
        self.aborting = False
        self._rows: list[Request] = []
        self._batch: RunningBatch | None = None
        self._next: list[int] = []  # the token each row is fed at the next step

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        """Decode until the queue is closed and drained and no row is left."""
        try:
            while self._turn():
                pass
        except BaseException as error:  # noqa: B036 - the model died: every caller must hear
            rows, self._rows, self._batch = self._rows, [], None
            self.on_break(error, rows)

    def _turn(self) -> bool:
        """One step boundary and one step; ``False`` once there is nothing left to do."""
        self._sweep()
        if not self._rows:  # nothing to decode: wait for the oldest requests
            joining = self.queue.take(oldest(self.max_batch_size), self.expire)
            if joining is None:
                return False
        elif self._may_join():
            free = self.max_batch_size - len(self._rows)
            joining = self.queue.take(oldest(free), self.expire, wait=False)
        else:
            joining = []
        if joining:
            self._join(joining)
        if self._rows:
            self._step()
        return True

    def _may_join(self) -> bool:
        """Whether waiting requests join the running batch at this step boundary."""
        free = self.max_batch_size - len(self._rows)
        if self.policy != "continuous" or free <= 0 or not len(self.queue):
            return False
        if free >= self.min_join_rows or self._deferred_steps >= self.max_join_delay_steps:
            self._deferred_steps = 0
            return True
        self._deferred_steps += 1
        return False

    def _join(self, requests: list[Request]) -> None:
        """Prefill ``requests`` and add the ones not finished at once to the running batch.

        When the prefill raises an ``Exception``, the group is split (see
        :meth:`_isolate`); a ``BaseException`` breaks the host, and every
        request of the group not answered yet is answered with the others.
        """
        try:
            self._join_group(requests)
        except BaseException:
            self._rows += [r for r in requests if not r.future.done() and r not in self._rows]
            raise

    def _join_group(self, requests: list[Request]) -> None:
        requests = self._still_wanted(requests)
        if not requests:
            return
        streams = [stream_of(r) for r in requests]
        start_s = time.monotonic()
        try:
            batch, logits = self.model.prefill([s.prompt for s in streams])
            tokens = next_tokens(logits, [s.sampler for s in streams])
        except Exception as error:
            self._isolate(requests, error)
            return
        del logits
        self.recorder.prefill(len(requests), time.monotonic() - start_s)
        publish(list(zip(streams, tokens)))
        for stream in streams:
            self.recorder.first_token(stream.first_token_s - stream.queued_s)
        keep = self._finish_done(requests, tokens)
        if not keep:
            return
        if len(keep) < len(requests):
            batch = batch.filter(keep)
        self._batch = batch if self._batch is None else type(batch).concatenate(
            [self._batch, batch]
        )
        self._rows += [requests[i] for i in keep]
        self._next += [tokens[i] for i in keep]

    def _isolate(self, requests: list[Request], error: Exception) -> None:
        """A group's prefill raised: split it until the failing prompts stand alone.

        As the core host bisects a failed batch: each half joins on its own (and
        is split again if it fails), so a group of n costs at most 2n - 2 more
        prefills, and only a prompt whose prefill fails alone gets the error.
        """
        if len(requests) == 1:
            self._fail(requests, error, "failed")
            return
        half = (len(requests) + 1) // 2
        self._join_group(requests[:half])
        self._join_group(requests[half:])

    def _still_wanted(self, requests: list[Request]) -> list[Request]:
        """``requests`` less those cancelled (their stream dropped) or past their deadline."""
        now_s = time.monotonic()
        wanted = []
        for request in requests:
            if stream_of(request).cancel_requested:
                self._fail([request], CancelledError(), "cancelled")
            elif request.deadline_s is not None and request.deadline_s <= now_s:
                self.expire(request)
            else:
                wanted.append(request)
        return wanted

    def _step(self) -> None:
        """Feed every row its next token; rows that finish leave."""
        start_s = time.monotonic()
        rows = self._rows
        try:
            self._batch, logits = self.model.step(self._batch, self._next)
            tokens = next_tokens(logits, [stream_of(r).sampler for r in rows])
        except Exception as error:
            # step() may have consumed the batch (HF grows its cache in place): the
            # state of every row is unknown, so each row of this step gets the error.
            self._rows, self._batch, self._next = [], None, []
            self._fail(rows, error, "failed")
            return
        del logits
        self.recorder.step(len(rows), len(rows), time.monotonic() - start_s)
        publish([(stream_of(r), t) for r, t in zip(rows, tokens)])
        keep = self._finish_done(rows, tokens)
        self._keep(keep, tokens)

    def _finish_done(self, requests: list[Request], tokens: list[int]) -> list[int]:
        """Settle the requests whose latest token ends them; the indices of the others."""
        keep, done = [], []
        for i, (request, token) in enumerate(zip(requests, tokens)):
            stream = stream_of(request)
            if (token == self.eos_token_id or len(stream) >= stream.max_new_tokens
                    or token in stream.stop_ids):
                done.append(request)
            else:
                keep.append(i)
        if done:  # counted first: a caller that reads stats() once answered sees itself
            now_s = time.monotonic()
            for request in done:
                self.recorder.finished("completed", now_s - request.enqueued_s)
            settle([(r, stream_of(r).tokens, False) for r in done])
            for request in done:
                stream_of(request)._close()
        return keep

    def _keep(self, keep: list[int], tokens: list[int]) -> None:
        """Keep rows ``keep`` of the running batch; ``tokens`` are what they are fed next."""
        if len(keep) == len(self._rows):
            self._next = tokens
            return
        self._rows = [self._rows[i] for i in keep]
        self._next = [tokens[i] for i in keep]
        self._batch = self._batch.filter(keep) if keep else None

    def _sweep(self) -> None:
        """Rows cancelled, past their deadline, or stopped leave before the next step."""
        if not self._rows:
            return
        now_s = time.monotonic()
        keep, cancelled, expired, stopped = [], [], [], []
        for i, request in enumerate(self._rows):
            if stream_of(request).cancel_requested:
                cancelled.append(request)
            elif request.deadline_s is not None and request.deadline_s <= now_s:
                expired.append(request)
            elif self.aborting:
                stopped.append(request)
            else:
                keep.append(i)
        if len(keep) == len(self._rows):
            return
        self._keep(keep, self._next)
        self._fail(cancelled, CancelledError(), "cancelled")
        for request in expired:
            self.expire(request)
        self._fail(stopped, HostStoppedError("the host was stopped during generation"), "failed")

    # ------------------------------------------------------------------ endings
    def expire(self, request: Request) -> None:
        """A request's deadline passed (queued or running): it gets RequestTimeoutError."""
        self._fail([request], RequestTimeoutError(timeout_message(request.enqueued_s)), "timed_out")

    def _fail(self, requests: list[Request], error: BaseException, outcome: str) -> None:
        fail(requests, error, outcome, self.recorder)


def fail(
    requests: list[Request], error: BaseException, outcome: str, recorder: GenerationRecorder
) -> None:
    """Settle ``requests`` with ``error``, end their streams, count them under ``outcome``."""
    if not requests:
        return
    for _ in requests:
        recorder.finished(outcome, None)
    settle([(r, error, True) for r in requests])
    for request in requests:
        stream_of(request)._close()
