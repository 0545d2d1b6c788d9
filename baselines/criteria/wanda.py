"""Wanda (Sun et al., 2023): score |W_ij|·‖X_j‖₂, prune the lowest floor(C_in·s) of every output row.

No weight update: kept weights stay exactly as they were.
"""
from dlp.methods.criterion import Criterion
from dlp.methods.masks import lowest_nm, lowest_per_row, zero_where
from dlp.methods.scores import wanda_scores
from dlp.registry import register_criterion
from dlp.walk.stats import SQNORM


@register_criterion("wanda", label="Wanda")
class Wanda(Criterion):
    needs = frozenset({SQNORM})

    def __init__(self, by_sort: bool = False):
        self.by_sort = by_sort  # the reference's full sort instead of a k-th value selection: the same mask, slower

    def prune(self, weight, stats, sparsity, pattern):
        score = wanda_scores(weight, stats)
        mask = lowest_nm(score, pattern) if pattern else lowest_per_row(score, sparsity, self.by_sort)
        return zero_where(weight, mask)
