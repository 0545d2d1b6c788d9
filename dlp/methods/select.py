"""Exact order statistics over a stream of non-negative float32 tensors, in bounded memory.

The median of all Wanda scores of a 7B model's block (about 200M values) must not need them all at once.
Non-negative float32 values order like their int32 bit patterns, so a two-pass radix select finds the exact
k-th smallest: the high 16 bits by histogram over the whole stream, then the low 16 bits among the values in
the chosen high bucket. Each pass holds one chunk (one weight matrix's scores) at a time.

The histograms are counted where the chunks are (on a GPU, by the GPU): copying every score to the host to count
it there in one thread was most of DLP's allocation pass on a 7B model. Counts are integers, so the answer is
the same wherever they are counted.
"""
from typing import Callable, Iterable

import torch

Stream = Callable[[], Iterable[torch.Tensor]]  # called once per pass; yields chunks of float32 >= 0


def _bits(chunk: torch.Tensor) -> torch.Tensor:
    # int32 is enough: the sign bit of a non-negative float is 0, so the shifts below never see a negative.
    return chunk.detach().to(torch.float32).contiguous().flatten().view(torch.int32)


class RadixSelect:
    """The k-th smallest of a stream seen twice, for callers that take other figures in the same passes
    (dlp.methods.profile: count, sum and outlier count): `first(chunk)` for every chunk, `choose(k)`, `second(chunk)`
    for every chunk again, in any order, then `value()`."""

    def __init__(self):
        self.high = None  # histogram of the high 16 bits (first pass), on the chunks' device
        self.low = None  # of the low 16 bits in the chosen bucket (second pass)
        self.bucket = self.rank = None  # set by `choose`

    def first(self, chunk: torch.Tensor) -> None:
        counts = torch.bincount(_bits(chunk) >> 16, minlength=1 << 15)
        self.high = counts if self.high is None else self.high.add_(counts.to(self.high.device))

    def choose(self, k: int) -> None:
        if self.high is None:
            raise ValueError(f"k={k} outside an empty stream")
        cum = torch.cumsum(self.high, 0).cpu()
        if k < 0 or k >= int(cum[-1]):
            raise ValueError(f"k={k} outside a stream of {int(cum[-1])} values")
        self.bucket = int(torch.searchsorted(cum, torch.tensor(k), right=True))
        self.rank = k - (int(cum[self.bucket - 1]) if self.bucket > 0 else 0)  # rank within the bucket

    def second(self, chunk: torch.Tensor) -> None:
        b = _bits(chunk)
        counts = torch.bincount(b[(b >> 16) == self.bucket] & 0xFFFF, minlength=1 << 16)
        self.low = counts if self.low is None else self.low.add_(counts.to(self.low.device))

    def value(self) -> float:
        offset = int(torch.searchsorted(torch.cumsum(self.low, 0).cpu(), torch.tensor(self.rank), right=True))
        return torch.tensor([(self.bucket << 16) | offset], dtype=torch.int32).view(torch.float32).item()


def kth_smallest(stream: Stream, k: int) -> float:
    """The k-th smallest value (0-based) of everything the stream yields."""
    select = RadixSelect()
    for chunk in stream():
        select.first(chunk)
    select.choose(k)
    for chunk in stream():
        select.second(chunk)
    return select.value()
