"""The step-wise protocol a model follows to be served by a :class:`GenerationHost`.

A step-wise model decodes a *running batch* of sequences one token at a time.
The host needs four operations, nothing more:

``model.prefill(prompts) -> (batch, logits)``
    Run the prompts (lists of token ids, of any lengths) and return a new
    running batch holding their state (for a transformer: the KV cache), and
    the logits of each prompt's next token, shape ``(len(prompts), vocab)``.
``model.step(batch, tokens) -> (batch, logits)``
    Feed one token per row (``tokens[i]`` to row ``i``) and return the
    updated batch and the logits of each row's next token.
``batch.filter(rows) -> batch``
    Keep only ``rows`` (indices into the batch, in that order); the others
    leave at once (finished, cancelled, timed out) and free their state.
``type(batch).concatenate(batches) -> batch``
    One batch holding the rows of every batch in order (new requests join the
    running batch this way, between two steps).

The contract that makes batching correct: the logits of a row depend on that
row's own tokens only, never on what else shares the batch or on when it
joined (with left padding, positions come from each row's own mask). The host
takes the ``argmax`` of the logits, or samples from them (per request, each row
from its own generator), and owns everything else:
queueing, deadlines, cancellation, EOS, ``max_new_tokens`` and streaming.

:class:`~batch_inference.generation.hf.HFCausalLM` implements the protocol for
Hugging Face causal language models; a model without ``prefill``/``step`` that
looks like one (it has a ``config``) is wrapped in it automatically.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = ["RunningBatch", "StepModel"]


@runtime_checkable
class RunningBatch(Protocol):
    """The state of the sequences being decoded together (one row per sequence)."""

    def __len__(self) -> int:
        """Rows in the batch."""
        ...

    def filter(self, rows: Sequence[int]) -> RunningBatch:
        """A batch holding only ``rows`` (indices into this batch, in that order)."""
        ...

    @classmethod
    def concatenate(cls, batches: Sequence[RunningBatch]) -> RunningBatch:
        """One batch holding the rows of ``batches``, in order."""
        ...


@runtime_checkable
class StepModel(Protocol):
    """A model that decodes a :class:`RunningBatch` one token per row and step.

    Attributes
    ----------
    max_positions:
        Most tokens (prompt plus generated) one sequence may hold, or ``None``
        when unbounded. The host refuses a request whose prompt length plus
        ``max_new_tokens`` exceeds it, before queueing it.
    vocab_size:
        Token ids must be in ``range(vocab_size)`` (``None``: not checked).
    """

    max_positions: int | None
    vocab_size: int | None

    def prefill(self, prompts: Sequence[Sequence[int]]) -> tuple[RunningBatch, Any]:
        """A new batch for ``prompts`` and each prompt's next-token logits ``(n, vocab)``."""
        ...

    def step(self, batch: RunningBatch, tokens: Sequence[int]) -> tuple[RunningBatch, Any]:
        """Feed ``tokens[i]`` to row ``i``; the updated batch and next-token logits."""
        ...


def greedy_tokens(logits: Any) -> list[int]:
    """The argmax of each row of ``logits`` (a torch tensor or NumPy array), as ints.

    The host's own way (NumPy's argmax for a CPU tensor: torch's is not vectorised there).
    """
    from ._sampling import next_tokens

    return next_tokens(logits, [None] * len(logits))
