"""Wanda (Sun et al., 2023): score |W_ij|·‖X_j‖₂, prune the lowest floor(C_in·s) of every output row.

No weight update: kept weights stay exactly as they were.
"""
import torch

from dlp.stats import SQNORM

from .base import Criterion, lowest_nm, lowest_per_row, zero_where


def wanda_scores(weight, stats):
    # Float32 scores whatever the weight's dtype (as the promoted product gave), multiplied in place: one new
    # tensor instead of two.
    return weight.abs().to(torch.float32).mul_(stats.column_norm().to(weight.device).unsqueeze(0))


class Wanda(Criterion):
    name = "wanda"
    needs = frozenset({SQNORM})

    def __init__(self, by_sort: bool = False):
        self.by_sort = by_sort  # the reference's full sort instead of a k-th value selection: the same mask, slower

    def prune(self, weight, stats, sparsity, pattern):
        score = wanda_scores(weight, stats)
        mask = lowest_nm(score, pattern) if pattern else lowest_per_row(score, sparsity, self.by_sort)
        return zero_where(weight, mask)
