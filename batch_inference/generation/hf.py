"""The step-wise protocol for Hugging Face causal language models (transformers 5 caches).

:class:`CausalLMBatch` owns the running batch's tensors, after Hugging Face
text-generation-inference's ``CausalLMBatch``: rows are *left*-padded to one
common length, so every row's newest token sits in the last column and one
step appends one column to all of them. Each row's positions come from its
own mask (``position_ids = cumsum(mask) - 1``), so a row computes exactly what
it would alone, whatever its neighbours' lengths. transformers is imported
lazily: importing this module does not import it.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ConfigurationError

__all__ = ["CausalLMBatch", "HFCausalLM"]


class CausalLMBatch:
    """Rows decoded together: attention mask, KV cache and each row's length.

    Attributes
    ----------
    attention_mask:
        ``(rows, width)`` int64; row ``i``'s tokens are its last ``lengths[i]``
        columns, the columns before them are padding (0).
    cache:
        The KV cache (a transformers ``DynamicCache``, or ``None`` for an
        empty batch): per layer, keys and values ``(rows, heads, width, head_dim)``.
    lengths:
        Tokens each row holds (prompt plus fed tokens): also the position id of
        the next token it is fed.
    """

    __slots__ = ("attention_mask", "cache", "lengths")

    def __init__(self, attention_mask: torch.Tensor, cache: Any, lengths: list[int]) -> None:
        self.attention_mask = attention_mask
        self.cache = cache
        self.lengths = lengths

    @property
    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(keys, values)`` of each layer of the cache."""
        return [] if self.cache is None else [(la.keys, la.values) for la in self.cache.layers]

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def width(self) -> int:
        """Columns of the padded batch (the longest row's length)."""
        return int(self.attention_mask.shape[1])

    def filter(self, rows: Sequence[int]) -> CausalLMBatch:
        """Keep ``rows`` (in that order) and drop the padding columns no kept row needs."""
        lengths = [self.lengths[i] for i in rows]
        if not lengths:
            return CausalLMBatch(self.attention_mask[:0, :0], None, [])
        start = self.width - max(lengths)
        rows = list(rows)
        first = rows[0]
        if rows == list(range(first, first + len(rows))):  # one run of rows: views, no copy
            end = first + len(rows)
            return CausalLMBatch(
                self.attention_mask[first:end, start:],
                _cache([(k[first:end, :, start:], v[first:end, :, start:])
                        for k, v in self.layers]),
                lengths,
            )
        # index_select copies only the kept rows (a third of advanced indexing's time on a CPU)
        index = torch.tensor(rows, device=self.attention_mask.device)
        return CausalLMBatch(
            self.attention_mask[:, start:].index_select(0, index),
            _cache([(k[:, :, start:].index_select(0, index), v[:, :, start:].index_select(0, index))
                    for k, v in self.layers]),
            lengths,
        )

    @classmethod
    def concatenate(cls, batches: Sequence[CausalLMBatch]) -> CausalLMBatch:
        """The rows of ``batches`` in order, left-padded to the widest one."""
        batches = [b for b in batches if len(b)]
        if len(batches) == 1:
            return batches[0]
        width = max(b.width for b in batches)
        masks = [_pad_left(b.attention_mask, width - b.width, dim=1) for b in batches]
        layers = []
        for per_batch in zip(*(b.layers for b in batches)):
            keys = [_pad_left(k, width - k.shape[2], dim=2) for k, _ in per_batch]
            values = [_pad_left(v, width - v.shape[2], dim=2) for _, v in per_batch]
            layers.append((torch.cat(keys), torch.cat(values)))
        lengths = [n for b in batches for n in b.lengths]
        return cls(torch.cat(masks), _cache(layers), lengths)


def _cache(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """A ``DynamicCache`` holding ``layers`` (the tensors themselves, not copies)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache()
    for keys, values in layers:
        layer = DynamicLayer()
        layer.lazy_initialization(keys, values)  # sets device, dtype and is_initialized
        layer.keys, layer.values = keys, values
        cache.layers.append(layer)
    return cache


def _pad_left(tensor: torch.Tensor, count: int, dim: int) -> torch.Tensor:
    """``tensor`` with ``count`` zero columns prepended along ``dim``."""
    if count == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = count
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class HFCausalLM:
    """A Hugging Face causal LM (e.g. ``GPT2LMHeadModel``) as a step-wise model.

    Parameters
    ----------
    model:
        A ``transformers`` causal LM in eval mode, on the device it runs on.
    pad_token_id:
        The id fed at padding positions (masked out, so any valid id works).

    The model must take ``attention_mask`` and ``position_ids`` and keep one
    full-attention ``DynamicCache`` layer per decoder layer (GPT-2, Llama-style
    models); sliding-window or recurrent caches are not handled.

    Attributes
    ----------
    max_positions:
        ``config.n_positions`` or ``config.max_position_embeddings``.
    vocab_size:
        ``config.vocab_size``.
    """

    def __init__(self, model: Any, pad_token_id: int = 0) -> None:
        config = getattr(model, "config", None)
        if config is None:
            raise ConfigurationError(
                f"HFCausalLM needs a transformers model with a config, got {type(model).__name__}"
            )
        self.model = model
        self.pad_token_id = pad_token_id
        self.vocab_size: int | None = getattr(config, "vocab_size", None)
        self.max_positions: int | None = (
            getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
        )
        self.device = next(model.parameters()).device
        parameters = inspect.signature(model.forward).parameters
        # transformers >= 5.x names it ``cache``; earlier 5.x releases ``past_key_values``.
        self._cache_name = "cache" if "cache" in parameters else "past_key_values"
        self._keep_last = "logits_to_keep" in parameters

    def prefill(self, prompts: Sequence[Sequence[int]]) -> tuple[CausalLMBatch, torch.Tensor]:
        """Run the prompts left-padded together; their batch and next-token logits."""
        lengths = [len(p) for p in prompts]
        width = max(lengths)
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):] = torch.as_tensor(list(prompt), dtype=torch.long)
            mask[row, width - len(prompt):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        from transformers import DynamicCache

        logits, cache = self._forward(ids, mask, positions, DynamicCache())
        return CausalLMBatch(mask, cache, lengths), logits

    def step(
        self, batch: CausalLMBatch, tokens: Sequence[int]
    ) -> tuple[CausalLMBatch, torch.Tensor]:
        """Feed one token per row; the grown batch and next-token logits.

        The cache grows in place: ``batch`` is consumed (use the returned one).
        """
        ids = torch.as_tensor(list(tokens), dtype=torch.long, device=self.device)[:, None]
        positions = torch.as_tensor(batch.lengths, dtype=torch.long, device=self.device)[:, None]
        mask = torch.cat([batch.attention_mask, torch.ones_like(ids)], dim=1)
        logits, cache = self._forward(ids, mask, positions, batch.cache)
        return CausalLMBatch(mask, cache, [n + 1 for n in batch.lengths]), logits

    def _forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
    ) -> tuple[torch.Tensor, Any]:
        kwargs: dict[str, Any] = {self._cache_name: cache}
        if self._keep_last:
            kwargs["logits_to_keep"] = 1
        with torch.inference_mode():
            out = self.model(
                input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs
            )
        grown = getattr(out, "cache", None)
        if grown is None:
            grown = out.past_key_values
        return out.logits[:, -1, :], grown
