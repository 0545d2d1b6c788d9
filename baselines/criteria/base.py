"""What a criterion is: given one weight matrix, its input statistics and a sparsity, choose what goes.

Criteria take a per-matrix sparsity so that any layerwise allocation can drive them; the engine never needs
to know which criterion it is running.
"""
import torch

from dlp.stats import LinearStats

from .pattern import NM


class Criterion:
    name: str = ""
    needs: frozenset = frozenset()  # statistics the engine must accumulate (see dlp.stats)

    def prune(self, weight: torch.Tensor, stats: LinearStats, sparsity: float, pattern: NM | None) -> torch.Tensor:
        """Return the new float32 weight (pruned entries exactly zero). `weight` is a float32 copy."""
        raise NotImplementedError


def lowest_per_row(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Mask of the floor(C_in·s) lowest scores in every row (stable sort: ties resolved by position)."""
    k = int(score.shape[1] * sparsity)
    mask = torch.zeros_like(score, dtype=torch.bool)
    if k > 0:
        idx = torch.sort(score, dim=1, stable=True)[1][:, :k]
        mask.scatter_(1, idx, True)
    return mask


def lowest_overall(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Mask of the floor(numel·s) lowest scores of the whole matrix: one threshold per matrix."""
    k = int(score.numel() * sparsity)
    mask = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
    if k > 0:
        idx = torch.sort(score.flatten(), stable=True)[1][:k]
        mask[idx] = True
    return mask.view_as(score)


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
