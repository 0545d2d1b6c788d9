"""AlphaPruning (Lu et al., NeurIPS 2024): heavy-tailed self-regularization theory per block.

Per Linear, the eigenvalues of WᵀW (squared singular values of W) are fitted with a power law whose xmin is
searched near the peak of their log-histogram (the reference's `xmin_peak`), keeping the fit with the smallest
Kolmogorov–Smirnov distance; its exponent α says how heavy the tail is (smaller α: better trained). α is
averaged per block, mapped linearly to [1 − ε, 1 + ε], and rescaled so that the parameter-weighted mean of
the block sparsities equals s. Weights only: no calibration data.
"""
import numpy as np
import torch

from dlp.errors import UserError
from dlp.methods.allocator import Allocation, Allocator
from dlp.registry import register_allocation
from dlp.walk.offload import resident_blocks
from dlp.walk.structure import find_linears


def esd_alpha(weight: torch.Tensor, bins: int = 100) -> float:
    eigs = torch.linalg.svdvals(weight.detach().to(torch.float64)).square().sort().values
    eigs = eigs[eigs > 1e-12]
    n_all = eigs.numel()
    log_eigs = torch.log(eigs)
    hist_log10 = torch.log10(eigs)
    lo, hi = hist_log10.min(), hist_log10.max()
    counts = torch.histc(hist_log10, bins, min=lo.item(), max=hi.item())
    edges = torch.linspace(lo.item(), hi.item(), bins + 1, dtype=torch.float64)
    peak = 10 ** edges[int(torch.argmax(counts))]
    xmin_lo, xmin_hi = 0.95 * peak, 1.5 * peak
    best_alpha, best_d = None, float("inf")
    for i in range(n_all - 1):
        xmin = eigs[i]
        if xmin < xmin_lo:
            continue
        if xmin > xmin_hi:
            break
        n = float(n_all - i)
        alpha = 1 + n / (torch.sum(log_eigs[i:]) - n * log_eigs[i])
        if alpha <= 1:
            continue
        seq = torch.arange(int(n), dtype=torch.float64)
        d = torch.max(torch.abs(1 - (eigs[i:] / xmin) ** (-alpha + 1) - seq / n)).item()
        if d < best_d:
            best_alpha, best_d = alpha.item(), d
    if best_alpha is None:  # no candidate near the peak: fit from the peak bucket onwards
        i = int(torch.searchsorted(eigs, torch.tensor(peak, dtype=torch.float64)).clamp(max=n_all - 2))
        n = float(n_all - i)
        best_alpha = (1 + n / (torch.sum(log_eigs[i:]) - n * log_eigs[i])).item()
    return best_alpha


def alpha_sparsities(block_alphas, block_params, target: float, epsilon: float) -> list[float]:
    a = np.asarray(block_alphas, dtype=np.float64)
    params = np.asarray(block_params, dtype=np.float64)
    width = a.max() - a.min()
    ratios = np.ones_like(a) if width == 0 else (a - a.min()) / width * (2 * epsilon) + (1 - epsilon)
    ratios = ratios * (params.sum() * target / (params * ratios).sum())
    return [float(x) for x in ratios]


@register_allocation("alphapruning", label="AlphaPruning", score_label="ESD alpha")
class AlphaPruning(Allocator):
    reads_data = False  # the weights' spectra alone

    def __init__(self, epsilon: float = 0.3):
        if not 0 < epsilon < 1:
            raise UserError(f"AlphaPruning epsilon must be in (0, 1) (got {epsilon})")
        self.epsilon = epsilon

    def allocate(self, model, calib_ids, target, batch_size, progress=True, model_id=None):
        alphas, params = [], []
        for _index, block in resident_blocks(model, on_device=True):
            linears = find_linears(block).values()
            alphas.append(float(np.mean([esd_alpha(layer.weight) for layer in linears])))
            params.append(sum(layer.weight.numel() for layer in linears))
        sparsities = alpha_sparsities(alphas, params, target, self.epsilon)
        met = all(0 <= s < 1 for s in sparsities)
        if not met:
            sparsities = [min(max(s, 0.0), 0.99) for s in sparsities]
        return Allocation(sparsities, alphas, {"epsilon": self.epsilon, "clamped": not met})
