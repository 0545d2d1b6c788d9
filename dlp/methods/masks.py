"""Which weights go, as masks over a score matrix: per row, per matrix, or per N:M group.

Every criterion ends in one of these selections, so they live in the core beside the criterion interface; the
fallback for a matrix without input statistics (dlp.walk.prune) uses them too.
"""
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from dlp.methods.pattern import NM


def lowest_per_row(score: torch.Tensor, sparsity: float, by_sort: bool = False) -> torch.Tensor:
    """Mask of the floor(C_in·s) lowest scores in every row; ties go by position (as a stable sort orders them).

    The default selects the k-th value (`_kth_smallest`: several times faster than sorting every row); `by_sort=True`
    is the reference code's full stable sort, kept to show that both give the very same mask.
    """
    return _lowest_k_per_row(score, int(score.shape[1] * sparsity), by_sort)


def lowest_overall(score: torch.Tensor, sparsity: float, by_sort: bool = False) -> torch.Tensor:
    """Mask of the floor(numel·s) lowest scores of the whole matrix: one threshold per matrix."""
    return _lowest_k_per_row(score.reshape(1, -1), int(score.numel() * sparsity), by_sort).view_as(score)


def zero_where(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`weight.masked_fill(mask, 0.0)`, the same bits (+0.0 where masked, every other value as it was), by
    `torch.where`, whose CPU kernel is the faster of the two."""
    return torch.where(mask, 0.0, weight)


def _lowest_k_per_row(score: torch.Tensor, k: int, by_sort: bool) -> torch.Tensor:
    """The k lowest of every row, exactly the first k of a stable ascending sort. Fast way: everything up to
    the k-th value; only where a tie at that value crosses the cut, the first (by position) of the ties."""
    if k == 0:
        return torch.zeros_like(score, dtype=torch.bool)
    if by_sort:
        order = torch.sort(score, dim=1, stable=True)[1]
        return torch.zeros_like(score, dtype=torch.bool).scatter_(1, order[:, :k], True)
    kth = _kth_smallest(score, k)
    at_most = score <= kth
    # The usual case, no tie crossing the cut: exactly k per row are <= the k-th value. One comparison and one
    # int32 count (a bool sum counts in int64, several times slower) instead of the general case's four passes.
    if bool((at_most.sum(1, dtype=torch.int32) == k).all()):
        return at_most
    mask = score < kth
    ties = score == kth
    still = k - mask.sum(1, keepdim=True)
    return mask | (ties & (torch.cumsum(ties, 1) <= still))


_ROWS_PER_THREAD = 64  # a floor, not tuned: below it the hand-off to the pool is a large share of the work


def _kth_smallest(score: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest value of every row, (rows, 1). On the CPU numpy's introselect (`partition`) finds the
    very same value several times faster than `torch.kthvalue` (most for SparseGPT's one selection over a whole
    128-column block). numpy runs it on one thread, with the GIL released, so the rows are split among torch's
    CPU threads."""
    if score.device.type == "cpu" and score.dtype in (torch.float32, torch.float64):
        rows = score.detach().numpy()
        threads = min(torch.get_num_threads(), rows.shape[0] // _ROWS_PER_THREAD)
        if threads <= 1:
            return torch.from_numpy(np.partition(rows, k - 1, axis=1)[:, k - 1:k])
        parts = np.array_split(rows, threads)
        kth = _pool().map(lambda part: np.partition(part, k - 1, axis=1)[:, k - 1:k], parts)
        return torch.from_numpy(np.concatenate(list(kth)))
    return torch.kthvalue(score, k, dim=1, keepdim=True).values


_POOL: dict = {}  # pid -> pool: a forked child inherits the parent's pool object but not its threads


def _pool() -> ThreadPoolExecutor:
    """One pool per process, sized to the CPU count (`_kth_smallest` gives work to torch.get_num_threads() of
    its threads at most)."""
    pid = os.getpid()
    if pid not in _POOL:
        _POOL.clear()
        _POOL[pid] = ThreadPoolExecutor(max(1, os.cpu_count() or 1), thread_name_prefix="kth")
    return _POOL[pid]


def lowest_nm(score: torch.Tensor, pattern: NM) -> torch.Tensor:
    """Mask of the N lowest scores in every group of M consecutive input columns."""
    rows, cols = score.shape
    if cols % pattern.m:
        raise ValueError(f"{cols} input columns do not split into groups of {pattern.m}")
    groups = score.view(rows, cols // pattern.m, pattern.m)
    idx = torch.topk(groups, pattern.n, dim=2, largest=False)[1]
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, idx, True)
    return mask.view(rows, cols)
