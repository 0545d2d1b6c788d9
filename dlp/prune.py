"""Prune a model: the engine walks the blocks, the allocation's per-block sparsity drives the criterion."""
import torch

from baselines.criteria.base import Criterion
from baselines.criteria.pattern import NM

from .engine import WalkResult, walk
from .structure import find_blocks


def prune_model(model, calib_ids: torch.Tensor, criterion: Criterion, block_sparsities: list[float],
                pattern: NM | None = None, batch_size: int = 8, progress: bool = True) -> WalkResult:
    n_blocks = len(find_blocks(model))
    if len(block_sparsities) != n_blocks:
        raise ValueError(f"{len(block_sparsities)} sparsities for {n_blocks} blocks")

    def visit(index, block, linears, stats):
        sparsity = block_sparsities[index]
        if sparsity <= 0:
            return False
        for name, layer in linears.items():
            new = criterion.prune(layer.weight.data.to(torch.float32).clone(), stats[name], sparsity, pattern)
            layer.weight.data.copy_(new.to(layer.weight.dtype))
        return True

    return walk(model, calib_ids, visit, criterion.needs, batch_size=batch_size,
                desc=f"prune ({criterion.name})", progress=progress)
