"""Shared pieces of the generation tests: a tiny float64 GPT-2, its greedy reference, a gate.

:func:`tiny_gpt2` is a random GPT-2 (fixed seed) in float64, so argmax
near-ties cannot flip between a batched and a lone computation; its
``initializer_range`` is large enough that completions vary token to token.
:func:`reference` is ``model.generate(do_sample=False)`` on the prompt alone.
:class:`GatedModel` wraps a step-wise model: its step number ``gate_at``
sets ``entered`` and blocks until ``release`` is set, so a test knows exactly
where the decoding is while it queues, cancels or stops; it records the rows
of every call.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch

VOCAB = 97
POSITIONS = 64


def tiny_gpt2(seed: int = 0) -> Any:
    """A 2-layer GPT-2 (vocab 97, 64 positions), random with ``seed``, float64, eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=POSITIONS,
                        vocab_size=VOCAB, initializer_range=0.3, bos_token_id=0,
                        eos_token_id=0)
    return GPT2LMHeadModel(config).double().eval()


def prompts(lengths: Sequence[int], seed: int = 1) -> list[list[int]]:
    """Random prompts of the given lengths (fixed seed)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, VOCAB, (n,), generator=g).tolist() for n in lengths]


def reference(model: Any, prompt: list[int], max_new_tokens: int,
              eos_token_id: int | None = None) -> list[int]:
    """Greedy decoding of ``prompt`` alone by ``model.generate``: the generated ids."""
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0,
            eos_token_id=eos_token_id,
        )
    tokens = out[0, len(prompt):].tolist()
    if eos_token_id is not None and eos_token_id in tokens:  # generate pads after EOS
        tokens = tokens[: tokens.index(eos_token_id) + 1]
    return tokens


class GatedModel:
    """A step-wise model whose step ``gate_at`` (0-based) blocks until ``release`` is set.

    ``more_gates`` are further step indices that block the same way, each on
    its own pair of events in ``gates[index] = (entered, release)``.

    Attributes
    ----------
    calls:
        ``("prefill" | "step", rows)`` of every call, in order.
    """

    def __init__(self, inner: Any, gate_at: int | None = 0, fail_at: int | None = None,
                 error: BaseException | None = None, more_gates: Sequence[int] = ()) -> None:
        self.inner = inner
        self.max_positions = inner.max_positions
        self.vocab_size = inner.vocab_size
        self.gate_at = gate_at
        self.fail_at = fail_at
        self.error = error
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls: list[tuple[str, int]] = []
        self._steps = 0
        self.gates = {i: (threading.Event(), threading.Event()) for i in more_gates}
        if gate_at is not None:
            self.gates[gate_at] = (self.entered, self.release)

    def open_all(self) -> None:
        """Release every gate (teardown: no worker stays blocked)."""
        for _, release in self.gates.values():
            release.set()

    def prefill(self, prompts: Sequence[Sequence[int]]) -> tuple[Any, Any]:
        self.calls.append(("prefill", len(prompts)))
        return self.inner.prefill(prompts)

    def step(self, batch: Any, tokens: Sequence[int]) -> tuple[Any, Any]:
        self.calls.append(("step", len(tokens)))
        index, self._steps = self._steps, self._steps + 1
        if index in self.gates:
            entered, release = self.gates[index]
            entered.set()
            if not release.wait(60):
                raise TimeoutError(f"the test never released the gate of step {index}")
        if index == self.fail_at and self.error is not None:
            raise self.error
        return self.inner.step(batch, tokens)

    @property
    def step_rows(self) -> list[int]:
        """Rows of every step call, in order."""
        return [rows for kind, rows in self.calls if kind == "step"]


def tiny_llama(seed: int = 0) -> Any:
    """A 2-layer Llama (rotary positions, grouped-query attention), random, float64."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                         max_position_embeddings=POSITIONS, initializer_range=0.3,
                         bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM(config).double().eval()


def tiny_qwen2(seed: int = 0) -> Any:
    """A 2-layer Qwen2 (rotary, grouped-query attention, biased projections), random, float64."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                         max_position_embeddings=POSITIONS, initializer_range=0.3,
                         bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return Qwen2ForCausalLM(config).double().eval()


#: The architectures the correctness tests run on (name -> constructor).
ARCHITECTURES = {"gpt2": tiny_gpt2, "llama": tiny_llama, "qwen2": tiny_qwen2}
