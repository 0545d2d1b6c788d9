"""Prune a model: the engine walks the blocks, the allocation's per-block sparsity drives the criterion."""
import time

import torch
from tqdm.auto import tqdm

from dlp.methods.criterion import Criterion
from dlp.methods.masks import lowest_nm, lowest_overall, zero_where
from dlp.methods.pattern import NM
from dlp.methods.refinement import Refinement
from dlp.walk.engine import WalkResult, walk
from dlp.walk.offload import offload_of
from dlp.walk.structure import find_blocks, find_linears


def shared_input_groups(linears: dict, stats: dict) -> list[list[str]]:
    """Names of the Linears grouped by the statistics object they share (one group per distinct input)."""
    groups: dict[int, list[str]] = {}
    for name in linears:
        groups.setdefault(id(stats[name]) if stats[name] is not None else name, []).append(name)
    return list(groups.values())


def prune_model(model, calib_ids: torch.Tensor, criterion: Criterion, block_sparsities: list[float],
                pattern: NM | None = None, batch_size: int | str = "auto", progress: bool = True,
                share_stats: bool = True, stop_early: bool = True,
                refinement: Refinement | None = None) -> WalkResult:
    """`refinement` (DSnoT) changes each matrix's mask after the criterion and before the block is replayed."""
    n_blocks = len(find_blocks(model))
    if len(block_sparsities) != n_blocks:
        raise ValueError(f"{len(block_sparsities)} sparsities for {n_blocks} blocks")

    uncalibrated = []

    def visit(index, block, linears, stats):
        sparsity = block_sparsities[index]
        if sparsity <= 0:
            return False
        for name, w in pruned_block(linears, stats, criterion, sparsity, pattern, refinement,
                                    uncalibrated, index).items():
            linears[name].weight.data.copy_(w.to(linears[name].weight.dtype))
        return True

    needs = criterion.needs | (refinement.needs if refinement is not None else frozenset())
    desc = f"prune ({criterion.name}{f' + {refinement.name}' if refinement is not None else ''})"
    if not needs:
        return weights_only(model, visit, desc=desc, progress=progress)
    # Every block with a sparsity is changed, so its statistics pass need not finish (dlp.walk.engine).
    result = walk(model, calib_ids, visit, needs, batch_size=batch_size, desc=desc, progress=progress,
                  share_stats=share_stats, replays=True, stop_early=stop_early)
    result.uncalibrated = uncalibrated
    return result


def pruned_block(linears: dict, stats: dict, criterion: Criterion, sparsity: float, pattern: NM | None,
                 refinement: Refinement | None = None, uncalibrated: list | None = None,
                 index: int = 0) -> dict[str, torch.Tensor]:
    """One block's Linears pruned at `sparsity` (float32, by name), the layers left as they are: the prune's visit,
    and a level of EvoPress's database (many sparsities from the same dense block). A routed expert no calibration
    token reached is pruned by magnitude and named in `uncalibrated`."""
    new_weights = {}
    for group in shared_input_groups(linears, stats):
        # One float32 copy each (`.to(...).clone()` copied a bfloat16 weight twice).
        weights = [linears[name].weight.data.to(torch.float32, copy=True) for name in group]
        st = stats[group[0]]
        if st is not None and st.tokens == 0:  # a routed expert no calibration token reached
            new = [by_magnitude(w, sparsity, pattern) for w in weights]
            if uncalibrated is not None:
                uncalibrated.extend(f"{index}.{name}" for name in group)
        else:
            new = criterion.prune_group(weights, st, sparsity, pattern)
            if refinement is not None:  # the layers still hold their dense weights
                new = [refinement.refine(linears[name].weight.data.to(torch.float32), w, st, sparsity, pattern,
                                         name) for name, w in zip(group, new)]
        new_weights.update(zip(group, new))
    return new_weights


def by_magnitude(weight: torch.Tensor, sparsity: float, pattern: NM | None) -> torch.Tensor:
    """The fallback for a matrix without input statistics (a routed expert that calibration never reached):
    its floor(numel·s) smallest |W| go (or the N smallest of every N:M group), as magnitude pruning does; an
    input-aware criterion has nothing to rank by, and SparseGPT would zero every weight of an unseen input."""
    score = weight.abs()
    return zero_where(weight, lowest_nm(score, pattern) if pattern else lowest_overall(score, sparsity))


def weights_only(model, visit, desc: str, progress: bool) -> WalkResult:
    """A criterion that reads no statistics (magnitude) decides from the weights alone: the calibration passes
    could not change its masks, so they are skipped (the reference code does not run them either)."""
    result = WalkResult()
    t = time.perf_counter()
    blocks = find_blocks(model).blocks
    for index, block, visiting in tqdm(offload_of(model).visits(blocks), total=len(blocks), desc=desc,
                                       disable=not progress):
        linears = find_linears(block)
        visiting.changed = visit(index, block, linears, {name: None for name in linears})
    result.timings.update({"capture": 0.0, "statistics": 0.0, "visit": time.perf_counter() - t, "replay": 0.0})
    result.blocks = len(blocks)
    return result
