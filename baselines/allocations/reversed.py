"""Reversed: another allocation's per-block sparsities (DLP's by default) in reverse block order.

The first block gets what the source gave the last one. If the reversed allocation loses clearly to the
original, the original's ordering of blocks matters; if it matches, only the spread does.
"""
from dlp.registry import register_allocation

from ._reorder import Reordered


@register_allocation("reversed", label="Reversed", score_label="source score", control=True)
class Reversed(Reordered):
    description, plural = "{of}'s sparsities in reverse block order", True
    isolates = "the spread it allows (its sparsities in reverse order)"

    def order(self, n_blocks: int) -> list[int]:
        return list(range(n_blocks - 1, -1, -1))
