"""DSnoT, dynamic sparse no training (Zhang et al., ICLR 2024): after any criterion, swap pruned and kept weights
of each output row, one pair a cycle, to shrink the expected reconstruction error of the row's output.

With D_ij = W_ij · Σ_tokens x_j / N (a weight's expected contribution to its output, summed over a sequence) and
e_i = Σ_{j pruned} D_ij (what pruning took from output i), a cycle of an active row regrows the pruned weight
with the largest D/Var(x_j) of the sign of e and prunes the kept weight of least Wanda score whose D has the
opposite sign (the lists are fixed at the start and walked from either end); a row stops for good once |e| is
within `threshold`, and the walk ends after `cycles` cycles. Regrown weights take their dense value back. For
N:M patterns the pruned partner of a regrown weight is the kept weight of least Wanda score in its own group of
M, and a swap must keep the sign of e. The authors' defaults refine the attention matrices only (`skip: mlp`).

Where this differs from the authors' code (results/fidelity.md): a row that has stopped changes nothing more
(theirs still writes its list pointers' picks, which changes masks only once a pointer runs past its side's
candidates, at widths far below a language model's), and a row whose lists run out stops instead of indexing
past them; for N:M the pruned partner is chosen by Wanda's score (theirs by the initial criterion's, the same
under Wanda). Under SparseGPT the kept weights keep SparseGPT's update; the authors' SparseGPT path never
accumulates its Hessian.
"""
import torch

from dlp.errors import UserError
from dlp.methods.refinement import Refinement
from dlp.registry import register_refinement
from dlp.walk.stats import MEAN, SQNORM, VARIANCE

SKIPS = ("none", "mlp", "self_attn")


def return_order(values: torch.Tensor) -> torch.Tensor:
    """Per row, the positions with a negative value in ascending position, then those with a positive value in
    descending position (a zero value in between): the authors' order of pruning candidates."""
    width = values.shape[1]
    position = torch.arange(width, device=values.device).expand_as(values)
    key = torch.where(values < 0, position, torch.where(values > 0, 2 * width - position, width))
    return torch.sort(key, dim=1, stable=True)[1]


def _start(weight, pruned, mean_sum, norm, var, var_power):
    """What both loops start from: each weight's contribution D, each row's error e and its sign, the regrowing
    order (D / Var^p of the pruned weights, ascending; kept ones, at 0, sit between the two ends) and Wanda's
    score with the pruned weights at +inf."""
    contribution = weight * mean_sum.reshape(1, -1)
    grow_key = torch.where(pruned, contribution, 0.0)
    error = grow_key.sum(1, keepdim=True)
    if var_power:
        grow_key = grow_key / var.reshape(1, -1).pow(var_power)
    grow_order = torch.sort(grow_key, dim=1, stable=True)[1]
    wanda = (weight.abs() * norm.reshape(1, -1)).masked_fill(pruned, float("inf"))
    return contribution, error, torch.sign(error), grow_order, wanda


def _walkers(pruned, length):
    """The mask to change, the row indices, a pointer pair per row at both ends of a list of `length`, the
    pointers' steps (forward from the start, back from the end) and every row active."""
    rows, device = pruned.shape[0], pruned.device
    ends = torch.stack([torch.zeros(rows, dtype=torch.long, device=device),
                        torch.full((rows,), length - 1, device=device)], 1)
    return (pruned.clone(), torch.arange(rows, device=device), ends, torch.tensor([1, -1], device=device),
            torch.ones(rows, dtype=torch.bool, device=device))


def refine_rows(weight: torch.Tensor, pruned: torch.Tensor, mean_sum: torch.Tensor, norm: torch.Tensor,
                var: torch.Tensor, cycles: int, threshold: float, var_power: float, same_sign: bool) -> torch.Tensor:
    """Unstructured DSnoT on rows that each prune the same number of weights; returns the new mask."""
    rows, width = weight.shape
    n_kept = width - int(pruned[0].sum())
    contribution, error, initial_sign, grow_order, wanda = _start(weight, pruned, mean_sum, norm, var, var_power)
    kept_by_wanda = torch.sort(wanda, dim=1, stable=True)[1][:, :n_kept]
    prune_order = kept_by_wanda.gather(1, return_order(contribution.gather(1, kept_by_wanda)))
    mask, row, grow_at, step, active = _walkers(pruned, width)
    prune_at = _walkers(pruned, n_kept)[2]
    for _ in range(cycles):
        active &= error[:, 0].abs() > threshold
        if not bool(active.any()):
            break
        grow_side = (error[:, 0] > 0).long()  # e > 0: regrow from the top (largest D/Var), else from the bottom
        prune_side = (error[:, 0] < 0).long()  # e < 0: prune from the end (D > 0), else from the start (D < 0)
        g_at, p_at = grow_at[row, grow_side], prune_at[row, prune_side]
        live = (prune_at[:, 0] <= prune_at[:, 1]) & (grow_at[:, 0] <= grow_at[:, 1])
        g = grow_order[row, g_at.clamp(0, width - 1)]
        p = prune_order[row, p_at.clamp(0, max(n_kept - 1, 0))]
        active &= live & mask[row, g] & ~mask[row, p]  # a list run out, or past its side's candidates: stop
        change = contribution[row, p] - contribution[row, g]
        if same_sign:
            active &= torch.sign(error[:, 0] + change) == initial_sign[:, 0]
        grow_at[row, grow_side] += torch.where(active, step[grow_side], 0)
        prune_at[row, prune_side] += torch.where(active, step[prune_side], 0)
        mask[row[active], p[active]] = True
        mask[row[active], g[active]] = False
        error[:, 0] += torch.where(active, change, 0.0)
    return mask


def refine_nm(weight: torch.Tensor, pruned: torch.Tensor, mean_sum: torch.Tensor, norm: torch.Tensor,
              var: torch.Tensor, m: int, cycles: int, threshold: float, var_power: float) -> torch.Tensor:
    """N:M DSnoT: each regrown weight's partner is pruned in its own group of M, and the sign of e is kept."""
    width = weight.shape[1]
    contribution, error, initial_sign, grow_order, wanda = _start(weight, pruned, mean_sum, norm, var, var_power)
    mask, row, grow_at, step, active = _walkers(pruned, width)
    for _ in range(cycles):
        active &= error[:, 0].abs() > threshold
        if not bool(active.any()):
            break
        grow_side = (error[:, 0] > 0).long()
        g_at = grow_at[row, grow_side]
        g = grow_order[row, g_at.clamp(0, width - 1)]
        start = g - g % m
        group = start.unsqueeze(1) + torch.arange(m, device=weight.device)
        p = start + wanda.gather(1, group).argmin(1)
        change = contribution[row, p] - contribution[row, g]
        active &= (grow_at[:, 0] <= grow_at[:, 1]) & mask[row, g] & ~mask[row, p]
        active &= torch.sign(error[:, 0] + change) == initial_sign[:, 0]
        grow_at[row, grow_side] += torch.where(active, step[grow_side], 0)
        wanda[row[active], p[active]] = float("inf")
        mask[row[active], p[active]] = True
        mask[row[active], g[active]] = False
        error[:, 0] += torch.where(active, change, 0.0)
    return mask


@register_refinement("dsnot", label="DSnoT")
class DSnoT(Refinement):
    needs = frozenset({SQNORM, MEAN, VARIANCE})

    def __init__(self, cycles: int = 50, threshold: float = 0.1, var_power: float = 1.0, same_sign: bool = False,
                 skip: str = "mlp"):
        if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 1:
            raise UserError(f"dsnot cycles must be an integer >= 1 (got {cycles!r})")
        for key, value in (("threshold", threshold), ("var_power", var_power)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise UserError(f"dsnot {key} must be a number >= 0 (got {value!r})")
        if skip not in SKIPS:
            raise UserError(f"dsnot skip must be one of {', '.join(SKIPS)} (got {skip!r})")
        self.cycles, self.threshold, self.var_power = cycles, float(threshold), float(var_power)
        self.same_sign, self.skip = bool(same_sign), skip

    def refine(self, dense, pruned, stats, sparsity, pattern, name):
        if name.split(".")[0] == self.skip:
            return pruned
        was = pruned == 0
        args = (stats.mean_sum().to(dense.device), stats.column_norm().to(dense.device),
                stats.variance().to(dense.device))
        if pattern:
            mask = refine_nm(dense, was, *args, pattern.m, self.cycles, self.threshold, self.var_power)
        else:
            mask = was.clone()
            counts = was.sum(1)
            for k in counts.unique().tolist():  # rows pruned alike are refined together
                if 0 < k < dense.shape[1]:
                    rows = (counts == k).nonzero()[:, 0]
                    mask[rows] = refine_rows(dense[rows], was[rows], *args, self.cycles, self.threshold,
                                             self.var_power, self.same_sign)
        regrown = was & ~mask
        return torch.where(mask, 0.0, torch.where(regrown, dense, pruned))
