"""DLP, Dynamic Layerwise Pruning (Chen et al., ICML 2025): sparsity per block from its Wanda scores.

S_l = |statistic| of all the block's scores |W_ij|·‖X_j‖₂ (median in the paper, mean in the authors' released
code); I_l = 1 − S_l / Σ_k S_k; d = minmax(I)·2α; density_l = d_l − mean(d) + (1 − s). A block with larger
scores therefore gets a lower I, a lower density and a higher sparsity.
"""
import numpy as np

from dlp.errors import UserError
from dlp.methods.allocator import Allocation, Allocator
from dlp.methods.profile import cached_profile
from dlp.methods.ratios import densities_to_sparsities, minmax
from dlp.registry import register_allocation


def dlp_sparsities(scores, target: float, alpha: float) -> tuple[list[float], bool]:
    s = np.abs(np.asarray(scores, dtype=np.float64))
    importance = 1.0 - s / s.sum()
    return densities_to_sparsities(minmax(importance, alpha), target)


@register_allocation("dlp", label="DLP", score_label="block score (median |W|·‖X‖)")
class DLP(Allocator):
    central = True

    def __init__(self, alpha: float = 0.15, statistic: str = "median", outlier_m: float = 5.0):
        if statistic not in ("median", "mean"):
            raise UserError(f"DLP statistic must be median or mean (got '{statistic}')")
        if not 0 < alpha < 0.5:
            raise UserError(f"DLP alpha must be in (0, 0.5) (got {alpha})")
        self.alpha, self.statistic, self.outlier_m = alpha, statistic, outlier_m

    def allocate(self, model, calib_ids, target, batch_size, progress=True, model_id=None):
        profile, cached = cached_profile(model, calib_ids, model_id or {}, self.outlier_m, batch_size, progress)
        scores = [b[self.statistic] for b in profile]
        sparsities, clamped = dlp_sparsities(scores, target, self.alpha)
        return Allocation(sparsities, scores, {"statistic": self.statistic, "alpha": self.alpha,
                                               "clamped": clamped, "profile_cached": cached})
