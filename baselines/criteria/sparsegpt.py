"""SparseGPT (Frantar & Alistarh, 2023): prune with second-order (OBS) updates of the remaining weights.

H = (2/N) Σ x xᵀ; inputs that never fire ("dead", H_jj = 0) get H_jj = 1 and their weights zeroed; damping
adds `percdamp`·mean(diag H); we take the upper Cholesky factor of H⁻¹. Columns are processed in blocks of
`blocksize`: each block chooses its mask adaptively by w²/[H⁻¹]_jj² (exactly floor(rows·cols·s) weights,
where the reference's `<= thresh` removes one more), then prunes column by column, pushing each column's
error onto the columns to its right.
"""
import torch

from dlp.stats import HESSIAN
from dlp.threads import single_thread

from .base import Criterion, lowest_nm, lowest_overall


class SparseGPT(Criterion):
    name = "sparsegpt"
    needs = frozenset({HESSIAN})

    def __init__(self, blocksize: int = 128, percdamp: float = 0.01):
        self.blocksize = blocksize
        self.percdamp = percdamp

    def inverse_hessian_factor(self, stats, W):
        H = stats.hessian().to(W.device).clone()
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0
        damp = self.percdamp * torch.mean(torch.diag(H))
        idx = torch.arange(H.shape[0], device=H.device)
        H[idx, idx] += damp
        L = torch.linalg.cholesky(H)
        Hinv = torch.cholesky_inverse(L)
        return torch.linalg.cholesky(Hinv, upper=True)

    def prune(self, weight, stats, sparsity, pattern):
        W = weight.clone()
        with single_thread(W.device):  # small sequential work: one thread is faster (see dlp.threads)
            Hinv = self.inverse_hessian_factor(stats, W)
            self._prune_columns(W, Hinv, sparsity, pattern)
        return W

    def _prune_columns(self, W, Hinv, sparsity, pattern):
        cols = W.shape[1]
        for i1 in range(0, cols, self.blocksize):
            i2 = min(i1 + self.blocksize, cols)
            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]
            d = torch.diag(Hinv1)
            if pattern is None:
                mask1 = lowest_overall(W1 ** 2 / d.unsqueeze(0) ** 2, sparsity)
            else:
                mask1 = torch.zeros_like(W1, dtype=torch.bool)
            for i in range(i2 - i1):
                w = W1[:, i]
                if pattern is not None and i % pattern.m == 0:
                    # N:M masks are chosen on the updated weights, group by group, as the reference does.
                    span = W1[:, i:i + pattern.m] ** 2 / d[i:i + pattern.m].unsqueeze(0) ** 2
                    mask1[:, i:i + pattern.m] = lowest_nm(span, pattern)
                q = w.masked_fill(mask1[:, i], 0.0)
                Q1[:, i] = q
                err = (w - q) / d[i]
                W1[:, i:].addr_(err, Hinv1[i, i:], alpha=-1)
                Err1[:, i] = err
            W[:, i1:i2] = Q1
            W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
