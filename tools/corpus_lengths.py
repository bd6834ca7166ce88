"""The corpus page's host rows on another length range: how far the thread way is from the ceiling.

``python tools/corpus_lengths.py --shortest 1 --longest 64`` embeds 2,000 queries
(MiniLM, real weights, max batch 32) each round: the offline ceiling, 64 threads
with batch-inference 1.0's ``BucketSeqBatcher`` and with ``LengthAwareBatcher``,
and ``host.map`` (window 1024); it prints each as a share of its round's ceiling,
and ``host.map``'s multiple of each thread row.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from batch_inference.batcher.bucket_seq_batcher import BucketSeqBatcher
from batch_inference.batcher.length_aware_batcher import LengthAwareBatcher
from batch_inference.benchmark import on_own_thread
from benchmarks.bert import BUCKETS, load_bert
from benchmarks.corpus import (
    PooledEmbedding,
    corpus,
    host_map,
    offline_ceiling,
    threads_through_host,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shortest", type=int, default=1)
    parser.add_argument("--longest", type=int, default=64)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    loaded = load_bert("minilm", device="cpu", dtype=torch.float32)
    model = PooledEmbedding(loaded.model, device="cpu")
    queries = corpus(args.queries, loaded.vocab_size, args.shortest, args.longest, seed=0)
    on_own_thread(lambda: [model.predict_batch(*q) for q in queries[:16]])
    for _ in range(args.rounds):
        ceiling = offline_ceiling(model, queries, 32).qps
        by_1_0 = threads_through_host(
            model, BucketSeqBatcher([0, 0], buckets=list(BUCKETS), tensor="pt",
                                    output_seq_dim=None), queries, 64, 32).qps
        by_length = threads_through_host(
            model, LengthAwareBatcher([0, 0], tensor="pt", output_seq_dim=None),
            queries, 64, 32).qps
        mapped = host_map(model, LengthAwareBatcher([0, 0], tensor="pt", output_seq_dim=None),
                          queries, 32, 1024).qps
        print(f"lengths {args.shortest}-{args.longest}: ceiling {ceiling:.1f} q/s | "
              f"threads, 1.0's batcher {by_1_0 / ceiling:.0%} | threads, LengthAware "
              f"{by_length / ceiling:.0%} | host.map {mapped / ceiling:.1%} | host.map over "
              f"threads: {mapped / by_1_0:.2f}x (1.0's batcher), {mapped / by_length:.2f}x "
              "(LengthAware)", flush=True)


if __name__ == "__main__":
    main()
