"""SparseGPT (Frantar & Alistarh, 2023): prune with second-order (OBS) updates of the remaining weights.

H = (2/N) Σ x xᵀ; inputs that never fire ("dead", H_jj = 0) get H_jj = 1 and their weights zeroed; damping
adds `percdamp`·mean(diag H); we take the upper Cholesky factor of H⁻¹ (`upper_factor_of_inverse`). Columns
are processed in blocks of `blocksize`: each block chooses its mask adaptively by w²/[H⁻¹]_jj² (exactly
floor(rows·cols·s) weights, where the reference's `<= thresh` removes one more), then prunes column by column,
pushing each column's error onto the columns to its right.

Every row is updated independently given H, so matrices fed the same input (q/k/v, gate/up) are pruned as one
stacked matrix: one factorisation of H, one column loop, longer vector operations. Masks are still chosen per
matrix (each matrix's own rows), so the result is that of pruning them one by one.

On a GPU the column loop is hundreds of tiny kernels per column block, and launching them from Python, not the
arithmetic, is its cost. With an unstructured mask (chosen before the loop) the loop's kernels are the same for
every block of a stacked matrix, so they are recorded once per shape as a CUDA graph and replayed: the same
kernels on the same operands, without the launches (`ColumnLoopGraphs`). N:M masks are chosen inside the loop
and stay eager; a graph that cannot be captured falls back to the eager loop with one warning.
"""
import itertools
import logging

import torch

from dlp.errors import first_line
from dlp.methods.criterion import Criterion
from dlp.methods.masks import lowest_nm, lowest_overall
from dlp.registry import register_criterion
from dlp.walk.stats import HESSIAN
from dlp.walk.threads import single_thread

log = logging.getLogger(__name__)


@register_criterion("sparsegpt", label="SparseGPT")
class SparseGPT(Criterion):
    needs = frozenset({HESSIAN})
    cuda_graphs = True  # replay the column loop as a CUDA graph on a GPU (tests compare it with the eager loop)

    def __init__(self, blocksize: int = 128, percdamp: float = 0.01):
        self.blocksize = blocksize
        self.percdamp = percdamp
        self.graphs = ColumnLoopGraphs()

    def flops(self, matrices):
        # Factorising H (Cholesky, inverse, Cholesky: about 4/3·n³) and the OBS updates (rows·n²).
        return sum(4 / 3 * c ** 3 + r * c * c for r, c in matrices)

    def inverse_hessian_factor(self, stats, W):
        # No local name holds the damped matrix: the factor overwrites it and frees it before its last copy, so
        # at most three n x n matrices (the statistics' Gram among them) are alive, not the four that holding H
        # and J H J side by side would take (on a 1536-wide input each is 9 MiB).
        return upper_factor_from_reversed(self.damped_reversed_hessian(stats, W))

    def damped_reversed_hessian(self, stats, W):
        """J H J with the reference's fixes (dead inputs: H_jj = 1 and their weights zeroed; damping by
        `percdamp`·mean(diag H)), built in the reversed order the factor wants; the same entries as fixing H
        and then reversing it."""
        reversed_h = stats.reversed_hessian().to(W.device)  # a new tensor: ours to change
        diag = torch.diag(reversed_h).flip(0)  # H's diagonal in H's order, so the mean sums as the reference's
        dead = diag == 0
        W[:, dead] = 0
        diag[dead] = 1
        damp = self.percdamp * torch.mean(diag)
        idx = torch.arange(reversed_h.shape[0], device=reversed_h.device)
        dead_at = idx[dead.flip(0)]
        reversed_h[dead_at, dead_at] = 1
        reversed_h[idx, idx] += damp
        return reversed_h

    def prune(self, weight, stats, sparsity, pattern):
        return self.prune_group([weight], stats, sparsity, pattern)[0]

    def prune_group(self, weights, stats, sparsity, pattern):
        rows = [w.shape[0] for w in weights]
        W = torch.cat(weights, 0)  # a copy, also of a single matrix
        Hinv = self.inverse_hessian_factor(stats, W)
        self._prune_columns(W, Hinv, sparsity, pattern, rows)
        return list(torch.split(W, rows, 0))

    def _prune_columns(self, W, Hinv, sparsity, pattern, rows):
        # Work on transposed column blocks so that each column is a contiguous row of memory.
        cols = W.shape[1]
        bounds = [0, *itertools.accumulate(rows)]
        for i1 in range(0, cols, self.blocksize):
            i2 = min(i1 + self.blocksize, cols)
            Wt = W[:, i1:i2].t().contiguous()  # (block columns, all rows)
            Hinv1 = Hinv[i1:i2, i1:i2]
            d = torch.diag(Hinv1)
            if pattern is None:
                score = Wt ** 2 / d.unsqueeze(1) ** 2
                mask = torch.cat([lowest_overall(score[:, a:b], sparsity) for a, b in zip(bounds, bounds[1:])], 1)
            else:
                mask = torch.zeros_like(Wt, dtype=torch.bool)
            pruned = mask.to(Wt.dtype)  # 1 where a weight goes: its error is w·1 / d, a kept one's w·0 / d
            Err = torch.empty_like(Wt)
            graphed = W.is_cuda and pattern is None and self.cuda_graphs and self.graphs.run(Wt, Err, pruned, Hinv1, d)
            if not graphed:
                with single_thread(W.device):  # small sequential work: one thread is faster (see dlp.walk.threads)
                    self._column_loop(Wt, Err, mask, pruned, Hinv1, d, pattern)
            W[:, i1:i2] = Wt.masked_fill_(mask, 0.0).t()  # unpruned entries hold their updated values
            W[:, i2:] -= Err.t().matmul(Hinv[i1:i2, i2:])

    @staticmethod
    def _column_loop(Wt, Err, mask, pruned, Hinv1, d, pattern, inner: int = 16):
        """Column by column: prune, divide the error by [H⁻¹]_ii, push it onto the columns to the right.

        The pushes are themselves lazy within the block: a column's error reaches the rest of its `inner`-wide
        slice at once and the columns after the slice once per slice, as one product. Same sums as the
        reference's rank-one updates over the whole block, far less memory traffic per column (which matters
        most for tall stacks such as gate/up)."""
        if pattern is not None:  # an N:M group's mask is chosen once all its columns are up to date
            inner = pattern.m * max(1, inner // pattern.m)
        cols = Wt.shape[0]
        for s in range(0, cols, inner):
            e = min(s + inner, cols)
            for i in range(s, e):
                if pattern is not None and i % pattern.m == 0:
                    # N:M masks are chosen on the updated weights, group by group, as the reference does.
                    span = Wt[i:i + pattern.m] ** 2 / d[i:i + pattern.m].unsqueeze(1) ** 2
                    mask[i:i + pattern.m] = lowest_nm(span.t(), pattern).t()
                    pruned[i:i + pattern.m] = mask[i:i + pattern.m]
                err = torch.mul(Wt[i], pruned[i], out=Err[i]).div_(d[i])
                Wt[i + 1:e].addr_(Hinv1[i, i + 1:e], err, alpha=-1)
            if e < cols:
                Wt[e:].addmm_(Hinv1[s:e, e:].t(), Err[s:e], alpha=-1)


class ColumnLoopGraphs:
    """SparseGPT's unstructured column loop as CUDA graphs, one per (block columns, rows, dtype, device): the
    operands are copied into the graph's own tensors, the recorded kernels replayed, the results copied out."""

    def __init__(self):
        self.graphs: dict[tuple, tuple] = {}
        self.broken = False  # capture failed once: the eager loop from then on

    def run(self, Wt, Err, pruned, Hinv1, d) -> bool:
        """Run the loop on these operands; False when no graph can be used (the caller runs it eagerly)."""
        if self.broken:
            return False
        key = (tuple(Wt.shape), Wt.dtype, Wt.device)
        if key not in self.graphs:
            try:
                self.graphs[key] = self._capture(Wt, Hinv1)
            except RuntimeError as exc:
                log.warning("SparseGPT: CUDA graph capture failed (%s); running the column loop eagerly",
                            first_line(exc))
                self.broken = True
                return False
        graph, (sWt, sErr, spruned, sHinv1, sd) = self.graphs[key]
        sWt.copy_(Wt)
        spruned.copy_(pruned)
        sHinv1.copy_(Hinv1)
        sd.copy_(d)
        graph.replay()
        Wt.copy_(sWt)
        Err.copy_(sErr)
        return True

    @staticmethod
    def _capture(Wt, Hinv1):
        static = (torch.zeros_like(Wt), torch.zeros_like(Wt), torch.zeros_like(Wt), torch.zeros_like(Hinv1),
                  torch.ones(Hinv1.shape[0], dtype=Hinv1.dtype, device=Hinv1.device))
        sWt, sErr, spruned, sHinv1, sd = static
        side = torch.cuda.Stream(Wt.device)  # warm up off the default stream, as graph capture wants
        side.wait_stream(torch.cuda.current_stream(Wt.device))
        with torch.cuda.stream(side):
            SparseGPT._column_loop(sWt, sErr, None, spruned, sHinv1, sd, None)
        torch.cuda.current_stream(Wt.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            SparseGPT._column_loop(sWt, sErr, None, spruned, sHinv1, sd, None)
        return graph, static


def upper_factor_of_inverse(H: torch.Tensor) -> torch.Tensor:
    """U upper triangular with Uᵀ U = H⁻¹, from one Cholesky factorisation and one triangular inverse.

    The reference code takes three steps (Cholesky of H, `cholesky_inverse`, Cholesky of H⁻¹). With J the
    reversal permutation, J H J = L Lᵀ gives H = (J L J)(J L J)ᵀ with J L J upper triangular, so
    H⁻¹ = (J L⁻¹ J)ᵀ (J L⁻¹ J) and U = J L⁻¹ J: the same factor (it is unique) in about half the work;
    tests compare both to float32 rounding."""
    return upper_factor_from_reversed(H.flip(0, 1))


def upper_factor_from_reversed(reversed_h: torch.Tensor) -> torch.Tensor:
    """`upper_factor_of_inverse` given J H J, which it overwrites: the Cholesky factor and the triangular
    inverse are computed in place (LAPACK works in place; same bits as the out-of-place calls), so no more than
    two n x n matrices are alive at once instead of five (on a wide input, these set pruning's memory peak)."""
    # Both in column-major order, as LAPACK works: row-major buffers take another path, which on some CPUs
    # (MKL on AMD EPYC, for one) rounds differently from the out-of-place calls. J H J is exactly symmetric, so
    # its transpose is the same matrix in column-major order, in the same memory.
    column_major = reversed_h.t()
    L = torch.linalg.cholesky(column_major, out=column_major)
    inverse = torch.eye(L.shape[0], dtype=L.dtype, device=L.device).t()
    torch.linalg.solve_triangular(L, inverse, upper=False, out=inverse)
    del L, reversed_h, column_major
    return inverse.flip(0, 1)
