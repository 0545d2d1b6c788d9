"""OWL, Outlier Weighed Layerwise sparsity (Yin et al., 2024).

D_l = share of the block's Wanda scores above M × their mean (its "outlier ratio"); min-max scaled to
[0, 2λ]; density_l = D'_l − mean(D') + (1 − s). More outliers → higher density → lower sparsity.
"""
from dlp.errors import UserError
from dlp.methods.allocator import Allocation, Allocator
from dlp.methods.profile import cached_profile
from dlp.methods.ratios import densities_to_sparsities, minmax
from dlp.registry import register_allocation


def owl_sparsities(outlier_ratios, target: float, lam: float) -> tuple[list[float], bool]:
    return densities_to_sparsities(minmax(outlier_ratios, lam), target)


@register_allocation("owl", label="OWL", score_label="outlier ratio")
class OWL(Allocator):
    isolates = "OWL's ranking at the same spread"  # as a control in the ablation, where its spread is DLP's


    def __init__(self, m: float = 5.0, lam: float = 0.08):
        if m <= 0 or not 0 < lam < 0.5:
            raise UserError(f"OWL needs M > 0 and lambda in (0, 0.5) (got M={m}, lambda={lam})")
        self.m, self.lam = m, lam

    def allocate(self, model, calib_ids, target, batch_size, progress=True, model_id=None):
        profile, cached = cached_profile(model, calib_ids, model_id or {}, self.m, batch_size, progress)
        ratios = [b["outlier_ratio"] for b in profile]
        sparsities, clamped = owl_sparsities(ratios, target, self.lam)
        return Allocation(sparsities, ratios, {"M": self.m, "lambda": self.lam, "clamped": clamped,
                                               "profile_cached": cached})
