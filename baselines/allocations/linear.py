"""Linear: sparsity rising linearly with depth over [s − α, s + α], mean s (the ramp of ATP, ICML 2025).

A control that ranks blocks by depth alone and reads no data: if an allocation does no better than this ramp
at the same spread, its ranking of blocks adds nothing beyond "prune later blocks more". DLP's published
ratios on LLaMA-2-7B are close to such a ramp.
"""
import numpy as np

from dlp.errors import UserError
from dlp.methods.allocator import Allocation, Allocator
from dlp.methods.ratios import densities_to_sparsities, minmax
from dlp.registry import register_allocation
from dlp.walk.structure import find_blocks


def linear_sparsities(n_blocks: int, target: float, alpha: float) -> tuple[list[float], bool]:
    # Scaling minus the depth puts the first block at the top density (lowest sparsity), as OWL and DLP scale
    # their scores, and shares their clamp at 0.01 and 0.99.
    return densities_to_sparsities(minmax(-np.arange(n_blocks, dtype=np.float64), alpha), target)


@register_allocation("linear", label="Linear", score_label="depth", control=True)
class Linear(Allocator):
    reads_data = False
    description = "A ramp over depth"
    isolates = "a plain ramp over depth"

    def __init__(self, alpha: float = 0.15):
        if not 0 < alpha < 0.5:
            raise UserError(f"linear alpha must be in (0, 0.5) (got {alpha})")
        self.alpha = alpha

    def allocate(self, model, calib_ids, target, batch_size, progress=True, model_id=None):
        n_blocks = len(find_blocks(model))
        sparsities, clamped = linear_sparsities(n_blocks, target, self.alpha)
        return Allocation(sparsities, [float(i) for i in range(n_blocks)], {"alpha": self.alpha, "clamped": clamped})
