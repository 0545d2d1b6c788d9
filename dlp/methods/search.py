"""Trials for allocations that search (ATP's step size): prune the model at candidate per-block sparsities with the
run's own criterion, measure perplexity on selection text the evaluation never sees, and put the dense weights
back. A trial is exactly the run's prune, so the winner is chosen for the criterion it will be used with."""
import math
import time
from dataclasses import dataclass, field

import torch

from dlp.evaluation.perplexity import window_losses
from dlp.methods.criterion import Criterion
from dlp.methods.pattern import NM
from dlp.methods.refinement import Refinement
from dlp.walk.prune import prune_model
from dlp.walk.structure import find_blocks, find_linears


@dataclass
class Trials:
    model: object
    calib: torch.Tensor
    criterion: Criterion
    pattern: NM | None
    batch_size: int | str
    windows: torch.Tensor | None  # (n, seqlen) token ids of the selection text; None: a search of its own data
    selection: dict  # its provenance, for the record
    eval_batch_size: int = 4
    refinement: Refinement | None = None
    seconds: float = 0.0
    count: int = 0
    _dense: list = field(default_factory=list)

    def perplexity(self, sparsities: list[float]) -> float:
        """Selection perplexity of the model pruned at `sparsities`; the model is dense again afterwards."""
        t = time.perf_counter()
        linears = [layer for block in find_blocks(self.model).blocks for layer in find_linears(block).values()]
        if not self._dense:
            self._dense = [layer.weight.data.clone() for layer in linears]
        try:
            prune_model(self.model, self.calib, self.criterion, list(sparsities), self.pattern, self.batch_size,
                        progress=False, refinement=self.refinement)
            n, seqlen = self.windows.shape
            losses = window_losses(self.model, self.windows.reshape(-1), seqlen, n, self.eval_batch_size,
                                   progress=False)
        finally:
            for layer, dense in zip(linears, self._dense):
                layer.weight.data.copy_(dense)
        self.seconds += time.perf_counter() - t
        self.count += 1
        return math.exp(losses.double().mean().item())

    def record(self) -> dict:
        return {"selection": self.selection, "trials": self.count, "seconds": round(self.seconds, 1)}
