"""Exact order statistics over a stream of non-negative float32 tensors, in bounded memory.

The median of all Wanda scores of a 7B model's block (about 200M values) must not need them all at once.
Non-negative float32 values order like their int32 bit patterns, so a two-pass radix select finds the exact
k-th smallest: the high 16 bits by histogram over the whole stream, then the low 16 bits among the values in
the chosen high bucket. Each pass holds one chunk (one weight matrix's scores) at a time.
"""
from typing import Callable, Iterable

import torch

Stream = Callable[[], Iterable[torch.Tensor]]  # called once per pass; yields chunks of float32 >= 0


def _bits(chunk: torch.Tensor) -> torch.Tensor:
    return chunk.detach().to(torch.float32).contiguous().flatten().view(torch.int32).to(torch.int64)


def kth_smallest(stream: Stream, k: int) -> float:
    """The k-th smallest value (0-based) of everything the stream yields."""
    high = torch.zeros(1 << 15, dtype=torch.int64)  # sign bit is 0 for non-negative floats
    for chunk in stream():
        high += torch.bincount((_bits(chunk) >> 16).cpu(), minlength=1 << 15)
    cum = torch.cumsum(high, 0)
    if k < 0 or k >= int(cum[-1]):
        raise ValueError(f"k={k} outside a stream of {int(cum[-1])} values")
    bucket = int(torch.searchsorted(cum, torch.tensor(k), right=True))
    below = int(cum[bucket - 1]) if bucket > 0 else 0
    low = torch.zeros(1 << 16, dtype=torch.int64)
    for chunk in stream():
        b = _bits(chunk)
        low += torch.bincount((b[(b >> 16) == bucket] & 0xFFFF).cpu(), minlength=1 << 16)
    offset = int(torch.searchsorted(torch.cumsum(low, 0), torch.tensor(k - below), right=True))
    return torch.tensor([(bucket << 16) | offset], dtype=torch.int32).view(torch.float32).item()


def median(stream: Stream, count: int) -> float:
    """Lower median (torch.median's convention: the ((n-1)//2)-th smallest)."""
    return kth_smallest(stream, (count - 1) // 2)
