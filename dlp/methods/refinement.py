"""What a refinement is: a stage between a criterion and the replay that changes which weights of a pruned
matrix are kept, from the dense weights and the input statistics (DSnoT swaps pruned and kept weights to shrink
the expected reconstruction error). Any criterion can take one (`refine=<name>`), registered by name in
dlp.registry."""
import torch

from dlp.methods.pattern import NM
from dlp.walk.stats import LinearStats


class Refinement:
    name: str = ""  # set by @register_refinement
    label: str = ""  # how tables print it ("Wanda + DSnoT")
    needs: frozenset = frozenset()  # statistics it reads beyond the criterion's (dlp.walk.stats)

    def refine(self, dense: torch.Tensor, pruned: torch.Tensor, stats: LinearStats, sparsity: float,
               pattern: NM | None, name: str) -> torch.Tensor:
        """Return the new float32 weight. `dense` is the matrix before pruning, `pruned` the criterion's result
        (zeros where it pruned), `name` the Linear's name in its block (self_attn.q_proj)."""
        raise NotImplementedError
