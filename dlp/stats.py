"""Float32 statistics of every Linear input, accumulated by forward hooks during a block's forward pass.

Wanda needs the squared column norms of X; SparseGPT the Gram matrix H = (2/N) Σ x xᵀ (N = number of
calibration sequences, as in the reference code; the scale does not change either method's choices).
Only what the criterion asks for is accumulated, so magnitude pruning costs no statistics at all.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn

SQNORM = "sqnorm"
HESSIAN = "hessian"


@dataclass
class LinearStats:
    in_features: int
    device: torch.device
    needs: frozenset
    nsamples: int = 0  # calibration sequences seen
    sqnorm: torch.Tensor | None = None  # Σ_tokens x_j², float64 (in_features,): see `add`
    gram: torch.Tensor | None = None  # Σ_tokens x xᵀ, float32 (in, in)

    def __post_init__(self):
        if SQNORM in self.needs:  # SparseGPT reads only H (its diagonal is the squared norm anyway)
            self.sqnorm = torch.zeros(self.in_features, dtype=torch.float64, device=self.device)
        if HESSIAN in self.needs:
            self.gram = torch.zeros(self.in_features, self.in_features, dtype=torch.float32, device=self.device)

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1])
        x32 = x.to(torch.float32)
        if self.gram is not None:
            self.gram.addmm_(x32.t(), x32)
        if self.sqnorm is not None:
            # Squared in place only when `x32` is our own copy (a float32 input is the model's own tensor).
            # Each batch sums in float32 (pairwise); the running total is float64, so the order in which batches
            # arrive hardly matters. (`sum(dtype=float64)` directly is 7x slower on the CPU.)
            squares = x32.square_() if x32 is not x else x32.square()
            self.sqnorm += squares.sum(0)

    def column_norm(self) -> torch.Tensor:
        """‖X_j‖₂ scaled as Wanda's `scaler_row` (mean over sequences of the squared norm), then sqrt."""
        return torch.sqrt(self.sqnorm / max(self.nsamples, 1)).to(torch.float32)

    def hessian(self) -> torch.Tensor:
        return self.gram * (2.0 / max(self.nsamples, 1))


def attach(linears: dict[str, nn.Linear], needs: frozenset, share: bool = True) -> tuple[dict[str, LinearStats], list]:
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
        stats[name].add(x.detach())

    for name, layer in linears.items():
        stats[name] = LinearStats(layer.in_features, layer.weight.device, needs)
        if needs:
            handles.append(layer.register_forward_hook(lambda _m, inp, _out, name=name: hook(name, inp)))
    return stats, handles
