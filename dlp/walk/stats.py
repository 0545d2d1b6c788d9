"""Float32 statistics of every Linear input, accumulated by forward pre-hooks during a block's forward pass.

Wanda needs the squared column norms of X; SparseGPT the Gram matrix H = (2/N) Σ x xᵀ (N = number of
calibration sequences, as in the reference code; the scale does not change either method's choices).
Only what the criterion asks for is accumulated, so magnitude pruning costs no statistics at all.

The Gram matrix is symmetric, so only its upper column blocks are multiplied (block i by blocks i..k-1):
(k+1)/2k of the products, and so correspondingly less time; the lower triangle is
filled by mirroring when H is read. Each entry is still a float32 sum over the same tokens.

Both statistics are summed one calibration sequence at a time, whatever the batch: the sums then meet in the
same order for every batch size, so in float32 (where a block's forward pass gives the same bits for any batch)
the statistics, masks and pruned weights are identical for batch 1 and batch 8 (except for routed experts,
whose inputs are gathered from the batch: dlp.walk.experts). The batch becomes a pure
speed/memory knob (the engine may pick it from a memory budget: dlp.walk.batching), and the float32 copy each hook
makes is one sequence long instead of a whole batch. A sequence's products are large enough that this costs
no speed over whole-batch sums.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn

from dlp.walk.compute_dtype import full_precision
from dlp.walk.precision import exact_reduced_precision_products

SQNORM = "sqnorm"
HESSIAN = "hessian"
MEAN = "mean"  # Σ_tokens x_j: DSnoT's expected contribution of a weight to its output
VARIANCE = "variance"  # Σ_sequences T·Var_tokens(x_j) over each sequence alone: DSnoT's regrowing weight


@dataclass
class LinearStats:
    in_features: int
    device: torch.device
    needs: frozenset
    nsamples: int = 0  # calibration sequences seen
    tokens: int = 0  # input rows added (a routed expert sees only its tokens; 0 if none reached it)
    seqlen: int | None = None  # tokens per calibration sequence (None: each call to `add` is one sequence)
    sqnorm: torch.Tensor | None = None  # Σ_tokens x_j², float64 (in_features,): see `add`
    gram: torch.Tensor | None = None  # Σ_tokens x xᵀ, float32 (in, in); upper column blocks only: see full_gram
    xsum: torch.Tensor | None = None  # Σ_tokens x_j, float64 (in_features,)
    varsum: torch.Tensor | None = None  # Σ_sequences T·(population variance of x_j in the sequence), float64

    SQNORM_DTYPE = torch.float64
    GRAM_DTYPE = torch.float32

    def __post_init__(self):
        if SQNORM in self.needs:  # SparseGPT reads only H (its diagonal is the squared norm anyway)
            self.sqnorm = torch.zeros(self.in_features, dtype=self.SQNORM_DTYPE, device=self.device)
        if HESSIAN in self.needs:
            self.gram = torch.zeros(self.in_features, self.in_features, dtype=self.GRAM_DTYPE, device=self.device)
        if MEAN in self.needs:
            self.xsum = torch.zeros(self.in_features, dtype=self.SQNORM_DTYPE, device=self.device)
        if VARIANCE in self.needs:
            self.varsum = torch.zeros(self.in_features, dtype=self.SQNORM_DTYPE, device=self.device)

    @classmethod
    def nbytes(cls, in_features: int, needs: frozenset) -> int:
        """What the statistics of one input of this width hold (the benchmark's memory floor counts it)."""
        return (in_features * cls.SQNORM_DTYPE.itemsize * len(needs & {SQNORM, MEAN, VARIANCE})
                + (in_features ** 2 * cls.GRAM_DTYPE.itemsize if HESSIAN in needs else 0))

    def add(self, x: torch.Tensor) -> None:
        """Add a batch of inputs one sequence at a time (see above). Some models flatten tokens before a Linear
        (OPT's fc1/fc2 see (tokens, width)), so sequences are cut by `seqlen` rows, not by the input's shape."""
        x = x.reshape(-1, x.shape[-1])
        self.tokens += x.shape[0]
        for sequence in x.split(self.seqlen or x.shape[0]):
            self._add_tokens(sequence)

    def _add_tokens(self, x: torch.Tensor) -> None:
        x32 = x.to(torch.float32)
        if self.gram is not None:
            edges = gram_block_edges(self.in_features)
            with exact_reduced_precision_products(x.dtype, x.device):  # bfloat16 activations: see dlp.walk.precision
                for a, b in zip(edges, edges[1:]):
                    self.gram[a:b, a:].addmm_(x32[:, a:b].t(), x32[:, a:])
        if self.xsum is not None:
            self.xsum += x32.sum(0)
        if self.varsum is not None:  # the variance within the sequence, weighted by its length (DSnoT's)
            self.varsum += x32.var(0, unbiased=False) * x32.shape[0]
        if self.sqnorm is not None:
            # Squared in place only when `x32` is our own copy (a float32 input is the model's own tensor).
            # Each sequence sums in float32 (pairwise); the running total is float64. (`sum(dtype=float64)`
            # directly is several times slower on a CPU.)
            squares = x32.square_() if x32 is not x else x32.square()
            self.sqnorm += squares.sum(0)

    def column_norm(self) -> torch.Tensor:
        """‖X_j‖₂ scaled as Wanda's `scaler_row` (mean over sequences of the squared norm), then sqrt."""
        return torch.sqrt(self.sqnorm / max(self.nsamples, 1)).to(torch.float32)

    def mean_sum(self) -> torch.Tensor:
        """Σ_tokens x_j / N (N sequences): DSnoT's `sum_metric_row`, a sum over one sequence's tokens on average."""
        return (self.xsum / max(self.nsamples, 1)).to(torch.float32)

    def variance(self) -> torch.Tensor:
        """Each sequence's own variance of x_j, averaged over sequences weighted by their tokens (DSnoT's `var`;
        not the variance over all tokens, which would add the spread of the sequences' means)."""
        return (self.varsum / max(self.tokens, 1)).to(torch.float32)

    def full_gram(self) -> torch.Tensor:
        """Σ x xᵀ: the lower blocks, never multiplied, are filled (in place, once more is harmless) by mirroring
        the upper ones. The diagonal blocks were computed whole."""
        edges = gram_block_edges(self.in_features)
        for a, b in zip(edges[1:], edges[2:]):
            self.gram[a:b, :a] = self.gram[:a, a:b].t()
        return self.gram

    def hessian(self) -> torch.Tensor:
        """(2/N) Σ x xᵀ, a new tensor (the caller may change it)."""
        return self.full_gram() * self._hessian_scale()

    def reversed_hessian(self) -> torch.Tensor:
        """J H J (rows and columns in reverse order), a new tensor with the same entries as `hessian()`:
        SparseGPT's factor starts from it, and building it straight from the Gram matrix saves holding H too."""
        return self.full_gram().flip(0, 1).mul_(self._hessian_scale())

    def _hessian_scale(self) -> float:
        return 2.0 / max(self.nsamples, 1)


def gram_block_edges(width: int) -> list[int]:
    """Column blocks of the Gram matrix: up to 6, none narrower than 192 columns (narrower blocks make small,
    slow products; beyond 6, more blocks save little, as (k+1)/2k is already within 1/12 of its limit 1/2)."""
    k = max(1, min(6, width // 192))
    return [i * width // k for i in range(k + 1)]


def gram_flops_per_token(width: int) -> int:
    """Multiply-adds ×2 that `add` spends per token on a Gram matrix of this width (upper blocks only)."""
    edges = gram_block_edges(width)
    return sum(2 * (b - a) * (width - a) for a, b in zip(edges, edges[1:]))


def attach(linears: dict[str, nn.Linear], needs: frozenset, share: bool = True,
           seqlen: int | None = None) -> tuple[dict[str, LinearStats], list]:
    """Hook every Linear; returns the stats and the hook handles (remove them when done).

    Linears fed the very same input tensor (q/k/v, gate/up) share one LinearStats: the statistics are identical,
    and a Gram matrix costs as much as the layer's own forward pass. Sharing is found on the first batch.
    `share=False` gives every Linear its own (the reference code's way; the tests compare both).
    """
    stats, handles = {}, []
    owners, shared = set(), set()
    last = {"x": None, "stats": None}  # the input the previous hook saw, and whose statistics took it

    def hook(name, inp):
        x = inp[0]
        if name not in owners and name not in shared:  # first call: decide once whether to share
            if share and x is last["x"]:
                stats[name] = last["stats"]
                shared.add(name)
            else:
                owners.add(name)
        if name in shared:
            return
        last["x"], last["stats"] = x, stats[name]
        with full_precision(x.device):  # under a compute dtype's autocast, addmm would round to it
            stats[name].add(x.detach())

    for name, layer in linears.items():
        stats[name] = LinearStats(layer.in_features, layer.weight.device, needs, seqlen=seqlen)
        if needs:
            # A pre-hook: the statistics need only the input, and the engine may end the pass before the last
            # Linear multiplies (dlp.walk.engine.StopAfterLastInput), its pre-hook registered after these.
            handles.append(layer.register_forward_pre_hook(lambda _m, inp, name=name: hook(name, inp)))
    return stats, handles
