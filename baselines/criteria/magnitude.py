"""Magnitude pruning: drop the smallest |W| of each matrix under one threshold (or per N:M group)."""
from dlp.methods.criterion import Criterion
from dlp.methods.masks import lowest_nm, lowest_overall, zero_where
from dlp.registry import register_criterion


@register_criterion("magnitude", label="Magnitude")
class Magnitude(Criterion):

    def __init__(self, by_sort: bool = False):
        self.by_sort = by_sort  # the reference's full sort instead of a k-th value selection: the same mask, slower

    def prune(self, weight, stats, sparsity, pattern):
        score = weight.abs()
        # Exactly floor(numel·s) weights go; the reference's `<= thresh` removes one more (plus ties).
        mask = lowest_nm(score, pattern) if pattern else lowest_overall(score, sparsity, self.by_sort)
        return zero_where(weight, mask)
