"""Batchers: turn many requests into one batch and the batch's outputs back into results."""

from .base import Batcher, BatchLimits, RequestInfo, Selection, Waiting
from .bucket_seq_batcher import BucketSeqBatcher
from .concat_batcher import ConcatBatcher
from .length_aware_batcher import LengthAwareBatcher
from .multi_batcher import MultiBatcher
from .seq_batcher import SeqBatcher

__all__ = [
    "Batcher",
    "BatchLimits",
    "BucketSeqBatcher",
    "ConcatBatcher",
    "LengthAwareBatcher",
    "MultiBatcher",
    "RequestInfo",
    "Selection",
    "SeqBatcher",
    "Waiting",
]
