"""The "Embedding a corpus" page's runners: one corpus, every way of running it, one table.

In this process: one query at a time, 64 threads calling ``host.predict``,
``host.map``, and the offline ceiling (the corpus sorted by length, cut into
batches, no host). The Ray Data rows are :mod:`benchmarks.corpus_ray`'s.

Every row keeps its embeddings (one pooled vector per query) so the page can
check that every method gives every query the same answer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from batch_inference import ModelHost
from batch_inference.batcher.base import Batcher
from batch_inference.benchmark import closed_loop, on_own_thread, stats_between
from benchmarks.bert import BertEmbedding, load_bert, make_queries, random_lengths
from benchmarks.scheduling import length_sorted_batches

MIB = 2**20


@dataclass
class CorpusRow:
    """One way of embedding the corpus, as measured.

    ``memory_mib`` is the growth of resident memory over the run: of this
    process for the rows run here, of every process of the local Ray cluster
    (driver, Ray's own processes, the actor) for the Ray rows.
    """

    method: str
    queries: int
    wall_s: float
    padding_efficiency: float
    mean_batch_size: float
    memory_mib: float
    embeddings: np.ndarray | None = field(default=None, repr=False)
    total_s: float | None = None  # Ray rows: end to end, with the actor's start

    @property
    def qps(self) -> float:
        return self.queries / self.wall_s


class PooledEmbedding:
    """``predict_batch(input_ids, attention_mask) -> (batch, hidden)``: a sentence embedding.

    The BERT page's model (:class:`~benchmarks.bert.BertEmbedding`)
    followed by the mean of the hidden states over the real tokens (as
    sentence-transformers pools MiniLM), so padding never changes a row's answer.
    """

    def __init__(self, model: Any, device: str = "cpu") -> None:
        self.bert = BertEmbedding(model, device)

    def predict_batch(self, input_ids: Any, attention_mask: Any) -> Any:
        import torch

        hidden = self.bert.predict_batch(input_ids, attention_mask)
        with torch.inference_mode():
            mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


class PooledMiniLM(PooledEmbedding):
    """:class:`PooledEmbedding` over the real MiniLM weights, loaded by the constructor."""

    def __init__(self, threads: int | None = None) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        super().__init__(load_bert("minilm").model)


def corpus(count: int, vocab_size: int, shortest: int, longest: int, seed: int = 0) -> list:
    """``count`` ``(input_ids, attention_mask)`` queries of lengths uniform in the range."""
    return make_queries(random_lengths(count, shortest, longest, seed), vocab_size, seed)


# ------------------------------------------------------------------ memory
def rss_bytes(pid: str = "self") -> int:
    """Resident memory of one process (``/proc/<pid>/status``); 0 when it has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def all_processes_rss() -> int:
    """Resident memory of every process this ``/proc`` shows (in the Ray child: the namespace's)."""
    return sum(rss_bytes(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit())


class PeakMemory:
    """Sample ``measure()`` every ``interval_s`` on a thread; ``growth_mib`` over the start."""

    def __init__(self, measure: Callable[[], int] = rss_bytes, interval_s: float = 0.02) -> None:
        self.measure = measure
        self.interval_s = interval_s
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        self.start = self.peak = self.measure()
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.measure())

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.measure())

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.start) / MIB


def _stack(outputs: Sequence[Any]) -> np.ndarray:
    return np.concatenate([np.asarray(o) for o in outputs])


# ------------------------------------------------------------------ rows run here
def one_at_a_time(model: Any, queries: Sequence[tuple[Any, ...]]) -> CorpusRow:
    """``predict_batch`` on each query alone, one after the other, on a thread of its own."""
    with PeakMemory() as memory:
        load = on_own_thread(closed_loop, model.predict_batch, queries, 1, True)
    return CorpusRow("One at a time", load.queries, load.wall_s, 1.0, 1.0, memory.growth_mib,
                     _stack(load.outputs))


def threads_through_host(model: Any, batcher: Batcher, queries: Sequence[tuple[Any, ...]],
                         clients: int, max_batch_size: int, warmup: int = 64,
                         label: str = "") -> CorpusRow:
    """Today's way: ``clients`` threads each call ``host.predict`` one query at a time
    (the row is named ``"<clients> threads through the host"``, then ``label``)."""
    with ModelHost(model_obj=model, batcher=batcher, max_batch_size=max_batch_size) as host:
        closed_loop(host.predict, queries[:warmup], clients)
        before = host.stats()
        with PeakMemory() as memory:
            load = closed_loop(host.predict, queries, clients, keep_outputs=True)
        window = stats_between(before, host.stats())
    return CorpusRow(f"{clients} threads through the host{label}", load.queries, load.wall_s,
                     window.padding_efficiency, window.mean_batch_size, memory.growth_mib,
                     _stack(load.outputs))


def host_map(model: Any, batcher: Batcher, queries: Sequence[tuple[Any, ...]],
             max_batch_size: int, window: int | None = None, warmup: int = 64) -> CorpusRow:
    """``host.map`` over the corpus (as two iterables: the ids and the masks)."""
    with ModelHost(model_obj=model, batcher=batcher, max_batch_size=max_batch_size) as host:
        list(host.map(*zip(*queries[:warmup]), window=window))
        before = host.stats()
        ids, masks = (q[0] for q in queries), (q[1] for q in queries)  # read lazily
        with PeakMemory() as memory:
            started = time.perf_counter()
            outputs = list(host.map(ids, masks, window=window))
            wall_s = time.perf_counter() - started
        stats = stats_between(before, host.stats())
    return CorpusRow("host.map", len(outputs), wall_s, stats.padding_efficiency,
                     stats.mean_batch_size, memory.growth_mib, _stack(outputs))


def offline_ceiling(model: Any, queries: Sequence[tuple[Any, ...]],
                    batch_size: int) -> CorpusRow:
    """The corpus sorted by length, cut into padded batches of ``batch_size``, no host."""
    lengths = [int(q[0].shape[-1]) for q in queries]
    order = sorted(range(len(queries)), key=lambda i: lengths[i])
    batches = length_sorted_batches(queries, batch_size, (0, 0))  # the same (stable) order

    def run() -> tuple[float, list[Any]]:
        started = time.perf_counter()
        outputs = [model.predict_batch(*batch) for batch in batches]
        return time.perf_counter() - started, outputs

    with PeakMemory() as memory:
        wall_s, outputs = on_own_thread(run)
    embeddings = np.empty_like(_stack(outputs))
    embeddings[order] = _stack(outputs)
    padded = sum(int(b[0].shape[0]) * int(b[0].shape[1]) for b in batches)
    return CorpusRow("Offline ceiling", len(queries), wall_s, sum(lengths) / padded,
                     len(queries) / len(batches), memory.growth_mib, embeddings)
