"""What a criterion is: given one weight matrix, its input statistics and a sparsity, choose what goes.

Criteria take a per-matrix sparsity so that any layerwise allocation can drive them; the engine never needs
to know which criterion it is running. A criterion registers itself by name (dlp.registry).
"""
import torch

from dlp.methods.pattern import NM
from dlp.walk.stats import LinearStats


class Criterion:
    name: str = ""  # set by @register_criterion
    label: str = ""  # how tables print it
    needs: frozenset = frozenset()  # statistics the engine must accumulate (see dlp.walk.stats); empty: weights only

    def prune(self, weight: torch.Tensor, stats: LinearStats | None, sparsity: float,
              pattern: NM | None) -> torch.Tensor:
        """Return the new float32 weight (pruned entries exactly zero). `weight` is a float32 copy; `stats` is
        None when `needs` is empty."""
        raise NotImplementedError

    def flops(self, matrices: list[tuple[int, int]]) -> float | None:
        """The arithmetic of pruning one block's matrices ((rows, columns) each) beyond their statistics, where
        the criterion has a model of it (the bench's GFLOP/s); None: not counted."""
        return None

    def prune_group(self, weights: list[torch.Tensor], stats: LinearStats | None, sparsity: float,
                    pattern: NM | None) -> list[torch.Tensor]:
        """Matrices fed the same input (q/k/v, gate/up) share `stats`; a criterion that can do them together
        (SparseGPT: one factorisation of H) overrides this. Results must equal pruning them one by one."""
        return [self.prune(w, stats, sparsity, pattern) for w in weights]
