"""Shuffled: another allocation's per-block sparsities (DLP's by default) in a seeded random order.

If a shuffled allocation does as well as the original, the original wins by the spread it allows and not by
its ranking of blocks. The order is drawn from `seed` (the run's calibration seed unless set), so seeds vary
the permutation along with the calibration draw.
"""
import numpy as np

from dlp.registry import register_allocation

from ._reorder import Reordered


def shuffled_order(n_blocks: int, seed: int) -> list[int]:
    return [int(i) for i in np.random.default_rng(seed).permutation(n_blocks)]


@register_allocation("shuffled", label="Shuffled", score_label="source score", control=True)
class Shuffled(Reordered):
    description, plural = "{of}'s sparsities shuffled across blocks", True
    isolates = "the spread it allows (its sparsities in any order)"

    def __init__(self, of: str = "dlp", seed: int = 0):
        super().__init__(of)
        self.seed = int(seed)

    def order(self, n_blocks: int) -> list[int]:
        return shuffled_order(n_blocks, self.seed)
