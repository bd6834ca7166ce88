"""The public generation host: many callers, one step-wise model, continuous batching."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterable
from typing import Any

from .._checks import checked_timeout, optional_seconds, positive_int, remaining
from .._lifecycle import HostLifecycle
from .._queue import RequestQueue
from .._request import Request
from ..batcher.base import RequestInfo
from ..errors import (
    ConfigurationError,
    HostBrokenError,
    HostStoppedError,
    RequestTimeoutError,
)
from ._loop import DecodeLoop, Policy, fail
from ._prompts import checked_max_new_tokens, checked_prompt
from ._sampling import checked_sampler, checked_stop_ids
from ._stream_state import StreamState
from .protocol import StepModel
from .stats import GenerationRecorder, GenerationStats
from .stream import TokenStream

__all__ = ["GenerationHost"]

_POLICIES = ("continuous", "static")


def as_step_model(model: Any) -> StepModel:
    """``model`` itself when it has ``prefill`` and ``step``; a Hugging Face LM wrapped."""
    if callable(getattr(model, "prefill", None)) and callable(getattr(model, "step", None)):
        return model
    if getattr(model, "config", None) is not None:
        from .hf import HFCausalLM

        return HFCausalLM(model)
    raise ConfigurationError(
        "model must implement prefill() and step() (see batch_inference.generation.protocol) "
        f"or be a Hugging Face causal LM, got {type(model).__name__}"
    )


class GenerationHost(HostLifecycle):
    """Generation for many callers, greedy or sampled, decoded together by one worker thread.

    Every greedy caller gets exactly the tokens greedy decoding of its prompt
    alone gives, and every seeded sampled caller the tokens it gets alone,
    whatever shares its batch and whenever it joined.

    Its lifecycle is every host's: a second
    :meth:`start` raises :class:`~batch_inference.errors.HostAlreadyRunningError`;
    once the model raised a ``BaseException`` the host is :attr:`broken` (not
    :attr:`running`) until it is stopped and started again; ``with`` and
    ``async with`` start and stop it; :meth:`stats` count across restarts.

    Parameters
    ----------
    model:
        A Hugging Face causal LM (``GPT2LMHeadModel``...; wrapped in
        :class:`~batch_inference.generation.hf.HFCausalLM`) or any
        :class:`~batch_inference.generation.protocol.StepModel`.
    max_batch_size:
        Most sequences decoded together.
    policy:
        ``"continuous"`` (default): waiting requests join the running batch at
        every step boundary. ``"static"`` (batch-inference 1.0's way): a batch
        is decoded to its end before the next one starts; finished rows still
        leave at once.
    eos_token_id:
        A sequence ends once it produced this token (included in its
        completion); ``None``: only ``max_new_tokens`` ends it.
    max_queue_size:
        Most requests waiting; a further one gets ``QueueFullError`` at once.
    default_timeout_s:
        Deadline of a request that gives none (``None``: no deadline).
    min_join_rows:
        With ``policy="continuous"`` and a running batch, waiting requests
        join once this many rows are free (a prefill costs about one step, so
        joining one row at a time would cost a step per row); default
        ``max(1, max_batch_size // 8)``.
    max_join_delay_steps:
        ... or once they have waited this many steps with rows free (default 8).
        An idle host starts a request at once.
    """

    def __init__(
        self,
        model: Any,
        max_batch_size: int = 32,
        *,
        policy: Policy = "continuous",
        eos_token_id: int | None = None,
        max_queue_size: int | None = None,
        default_timeout_s: float | None = None,
        min_join_rows: int | None = None,
        max_join_delay_steps: int = 8,
    ) -> None:
        self.max_batch_size = positive_int("max_batch_size", max_batch_size)
        self.min_join_rows = (max(1, max_batch_size // 8) if min_join_rows is None
                              else positive_int("min_join_rows", min_join_rows))
        if isinstance(max_join_delay_steps, bool) or not isinstance(max_join_delay_steps, int) \
                or max_join_delay_steps < 0:
            raise ConfigurationError(
                f"max_join_delay_steps must be an integer >= 0, got {max_join_delay_steps!r}"
            )
        self.max_join_delay_steps = max_join_delay_steps
        if policy not in _POLICIES:
            raise ConfigurationError(f"policy must be one of {_POLICIES}, got {policy!r}")
        if eos_token_id is not None and (isinstance(eos_token_id, bool)
                                         or not isinstance(eos_token_id, int)):
            raise ConfigurationError(f"eos_token_id must be an int or None, got {eos_token_id!r}")
        if max_queue_size is not None:
            positive_int("max_queue_size", max_queue_size)
        default_timeout_s = optional_seconds("default_timeout_s", default_timeout_s)
        super().__init__()
        self.model = as_step_model(model)
        self.policy: Policy = policy
        self.eos_token_id = eos_token_id
        self.max_queue_size = max_queue_size
        self.default_timeout_s = default_timeout_s
        self._recorder = GenerationRecorder()
        self._queue = RequestQueue(max_queue_size)
        self._queue.close()  # refuses requests until start()
        self._loop: DecodeLoop | None = None
        self._thread: threading.Thread | None = None
        self._broken: BaseException | None = None

    # ------------------------------------------------------------------ lifecycle
    # start(), stop(), running, broken and the context managers: HostLifecycle.
    def _run_broken(self) -> bool:
        return self._broken is not None

    def _start_run(self) -> None:
        """A new queue and decode loop, on a worker thread of their own."""
        self._broken = None
        self._queue = RequestQueue(self.max_queue_size)
        self._loop = DecodeLoop(self.model, self._queue, self._recorder, self.max_batch_size,
                                self.policy, self.eos_token_id, self._break,
                                self.min_join_rows, self.max_join_delay_steps)
        self._thread = threading.Thread(
            target=self._loop.run, name="batch_inference-generation", daemon=True
        )
        self._thread.start()

    def _stop_run(self, cancel_pending: bool, timeout: float | None) -> bool:
        """Close the queue; with ``cancel_pending``, queued requests (and running ones, at the
        next step boundary) get :class:`~batch_inference.errors.HostStoppedError`; join."""
        thread, loop, self._thread = self._thread, self._loop, None
        assert thread is not None
        self._queue.close()
        if cancel_pending and loop is not None:
            loop.aborting = True
            self._fail_queued(HostStoppedError("the host was stopped before this request ran"))
        if thread is not threading.current_thread():
            thread.join(timeout)
        return not thread.is_alive()

    def _fail_queued(self, error: BaseException) -> None:
        queued = [r for r in self._queue.drain() if r.future.set_running_or_notify_cancel()]
        fail(queued, error, "failed", self._recorder)

    def _break(self, cause: BaseException, rows: list[Request]) -> None:
        """The model raised a ``BaseException``: fail every caller, refuse new requests."""
        self._broken = cause
        error = HostBrokenError(f"the generation worker died: {type(cause).__name__}: {cause}")
        error.__cause__ = cause
        self._queue.close()
        fail(rows, error, "failed", self._recorder)
        self._fail_queued(error)

    # ------------------------------------------------------------------ requests
    def stream(
        self,
        prompt: Any,
        max_new_tokens: int = 16,
        *,
        timeout: float | None = None,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float = 1.0,
        seed: int | None = None,
        stop_token_ids: Iterable[int] = (),
    ) -> TokenStream:
        """Queue a prompt and return its :class:`TokenStream` at once.

        Iterate it (``for token in stream`` / ``async for token in stream``) to
        receive tokens as they are generated, or wait for the whole completion
        (``stream.result()`` / ``await stream``).

        Parameters
        ----------
        prompt:
            Token ids: a list of ints, or a 1-D (or ``(1, n)``) integer tensor or array.
        max_new_tokens:
            Most tokens generated.
        timeout:
            Seconds until the request's deadline (default: ``default_timeout_s``).
        temperature:
            ``0`` (default): greedy decoding, exactly the argmax at every step.
            Above 0: sample from the softmax of the logits divided by it.
        top_k:
            When sampling, keep only the ``top_k`` most likely tokens (``None``: all).
        top_p:
            When sampling, keep only the smallest set of most likely tokens whose
            probability reaches ``top_p`` (after ``top_k``; ``1``: all).
        seed:
            Seed of this request's own random generator: a seeded request gets
            the same tokens whatever shares its batch and whenever it joins
            (``None``: a fresh seed from the OS).
        stop_token_ids:
            Token ids that end the completion (included in it), besides the
            host's ``eos_token_id``.

        Raises
        ------
        InvalidRequestError
            The prompt is empty, not integer token ids, outside the vocabulary,
            or longer than the model's positions allow with ``max_new_tokens``;
            a sampling value or a stop id is invalid (the message names it).
        QueueFullError
            ``max_queue_size`` requests are waiting already.
        HostNotRunningError, HostBrokenError
            The host is not started, or its worker died.
        """
        if self._broken is not None:
            raise HostBrokenError(f"the generation worker died: {self._broken!r}")
        ids = checked_prompt(prompt, self.model.vocab_size)
        count = checked_max_new_tokens(max_new_tokens, len(ids), self.model.max_positions)
        sampler = checked_sampler(temperature, top_k, top_p, seed)
        stop_ids = checked_stop_ids(stop_token_ids, self.model.vocab_size)
        if timeout is None:
            timeout = self.default_timeout_s
        timeout = None if timeout is None else checked_timeout(timeout)
        now_s = time.monotonic()
        request = Request((), RequestInfo(length=len(ids)), now_s,
                          None if timeout is None else now_s + timeout)
        state = StreamState(ids, count, request.future, now_s, request.deadline_s, sampler,
                            stop_ids)
        request.args = (state,)
        self._queue.put(request)
        self._recorder.count("requests")
        return TokenStream(state, lambda: self._cancel_queued(request))

    def generate(
        self,
        prompt: Any,
        max_new_tokens: int = 16,
        *,
        timeout: float | None = None,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float = 1.0,
        seed: int | None = None,
        stop_token_ids: Iterable[int] = (),
    ) -> list[int]:
        """The completion of ``prompt``: the generated token ids (blocks the calling thread).

        Takes what :meth:`stream` takes; raises what it raises,
        :class:`~batch_inference.errors.RequestTimeoutError` past the deadline,
        and the model's own exception if it raised one.
        """
        stream = self.stream(prompt, max_new_tokens, timeout=timeout, temperature=temperature,
                             top_k=top_k, top_p=top_p, seed=seed, stop_token_ids=stop_token_ids)
        try:
            return stream.result(remaining(stream.deadline_s))
        except TimeoutError as error:
            if isinstance(error, RequestTimeoutError):
                raise
            stream.cancel()
            raise RequestTimeoutError("no completion within the deadline") from None

    async def generate_async(
        self,
        prompt: Any,
        max_new_tokens: int = 16,
        *,
        timeout: float | None = None,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float = 1.0,
        seed: int | None = None,
        stop_token_ids: Iterable[int] = (),
    ) -> list[int]:
        """:meth:`generate` for asyncio: awaits the completion without blocking the loop.

        Cancelling the awaiting task cancels the request (its row leaves at the
        next step).
        """
        stream = self.stream(prompt, max_new_tokens, timeout=timeout, temperature=temperature,
                             top_k=top_k, top_p=top_p, seed=seed, stop_token_ids=stop_token_ids)
        try:
            async with asyncio.timeout(remaining(stream.deadline_s)):
                return await stream  # cancelled by the timeout, it cancels the request
        except TimeoutError as error:
            if isinstance(error, RequestTimeoutError):
                raise
            raise RequestTimeoutError("no completion within the deadline") from None

    def _cancel_queued(self, request: Request) -> None:
        """A caller cancelled: drop its request if still queued (else the worker drops it)."""
        if request.future.cancel():
            self._queue.discard(request)
            self._recorder.finished("cancelled", None)
            request.args[0]._close()

    # ------------------------------------------------------------------ introspection
    def stats(self) -> GenerationStats:
        """A snapshot of counters, running batch sizes, tokens/s, time to first token."""
        return self._recorder.snapshot(len(self._queue))

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return (f"GenerationHost({type(self.model).__name__}, max_batch_size="
                f"{self.max_batch_size}, policy={self.policy!r}, {state})")

