"""RIA, relative importance and activations (Zhang et al., ICLR 2024): score
(|W_ij| / Σ_k |W_kj| + |W_ij| / Σ_k |W_ik|) · ‖X_j‖₂^a, the lowest floor(numel·s) of the matrix pruned.

Relative importance weighs a weight against the others of its input channel (column) and of its output
channel (row), so that no channel loses all its weights; the activation norm enters at power a (0.5 in the
paper: ‖X_j‖₂^0.5, the authors' sqrt(scaler_row)^a). As in the authors' code, the default selection is one
threshold per matrix; `per_row=true` is their `--per_outneuron` (floor(C_in·s) per output row).

Where the masks differ from the authors' code (results/fidelity.md): their threshold test
`W_metric <= thresh` with `thresh = sort(W_metric.flatten())[int(numel·s)]` prunes one weight more than
floor(numel·s) per matrix; here exactly floor(numel·s) go, the sparsity the allocation asked for.
"""
import torch

from dlp.errors import UserError
from dlp.methods.criterion import Criterion
from dlp.methods.masks import lowest_nm, lowest_overall, lowest_per_row, zero_where
from dlp.registry import register_criterion
from dlp.walk.stats import SQNORM, LinearStats


def ria_scores(weight: torch.Tensor, stats: LinearStats, a: float) -> torch.Tensor:
    w = weight.abs().to(torch.float32)
    relative = w / w.sum(0) + w / w.sum(1, keepdim=True)  # a dead channel (all zero) gives NaN, as theirs
    return relative.mul_(stats.column_norm().to(w.device, torch.float32).pow(a).unsqueeze(0))


@register_criterion("ria", label="RIA")
class RIA(Criterion):
    needs = frozenset({SQNORM})

    def __init__(self, a: float = 0.5, per_row: bool = False):
        if not isinstance(a, (int, float)) or isinstance(a, bool) or a < 0:
            raise UserError(f"ria a must be a number >= 0 (got {a!r})")
        self.a = float(a)
        self.per_row = bool(per_row)

    def prune(self, weight, stats, sparsity, pattern):
        score = ria_scores(weight, stats, self.a)
        if pattern:
            mask = lowest_nm(score, pattern)
        else:
            mask = (lowest_per_row if self.per_row else lowest_overall)(score, sparsity)
        return zero_where(weight, mask)
