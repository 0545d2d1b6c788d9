"""The fast path changes no result: batched passes, shared statistics, kthvalue selection, grouped SparseGPT
and the chunked output layer against the reference code's way (one sequence at a time, statistics per Linear,
full sorts, full logits), on tiny models of every family."""
import copy

import pytest
import torch
from tiny import FAMILIES, tiny_ids, tiny_model

from baselines.criteria.magnitude import Magnitude
from baselines.criteria.sparsegpt import SparseGPT
from baselines.criteria.wanda import Wanda
from dlp.evaluation.perplexity import window_losses
from dlp.walk.prune import prune_model
from dlp.walk.structure import find_blocks, find_linears

SLOW = dict(batch_size=1, share_stats=False, stop_early=False)
FAST = dict(batch_size=4, share_stats=True)


def masks(model):
    return {f"{i}.{name}": (layer.weight == 0).clone()
            for i, block in enumerate(find_blocks(model).blocks) for name, layer in find_linears(block).items()}


def ppl(model, ids, chunk_tokens, batch_size):
    return torch.exp(window_losses(model, ids, 32, batch_size=batch_size, progress=False,
                                   chunk_tokens=chunk_tokens).double().mean()).item()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("criterion", ["wanda", "magnitude"])
def test_fast_path_same_masks_and_perplexity(family, criterion):
    base, calib, evalset = tiny_model(family), tiny_ids(n=8, seed=1), tiny_ids(n=6, seed=2).flatten()
    sparsities = [0.5, 0.7, 0.6]
    slow, fast = copy.deepcopy(base), copy.deepcopy(base)
    make = {"wanda": Wanda, "magnitude": Magnitude}[criterion]
    prune_model(slow, calib, make(by_sort=True), sparsities, progress=False, **SLOW)
    prune_model(fast, calib, make(), sparsities, progress=False, **FAST)
    slow_masks, fast_masks = masks(slow), masks(fast)
    assert all(torch.equal(slow_masks[k], fast_masks[k]) for k in slow_masks)
    assert sum(int(m.sum()) for m in fast_masks.values()) > 0
    reference = ppl(slow, evalset, chunk_tokens=None, batch_size=1)
    chunked = ppl(fast, evalset, chunk_tokens=7, batch_size=4)  # 7: chunks that cut across windows
    assert chunked == pytest.approx(reference, rel=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_grouped_sparsegpt_matches_one_matrix_at_a_time(family):
    base, calib = tiny_model(family), tiny_ids(n=8, seed=1)
    slow, fast = copy.deepcopy(base), copy.deepcopy(base)
    prune_model(slow, calib, SparseGPT(), [0.6] * 3, progress=False, **SLOW)
    prune_model(fast, calib, SparseGPT(), [0.6] * 3, progress=False, **FAST)
    slow_masks, fast_masks = masks(slow), masks(fast)
    assert all(torch.equal(slow_masks[k], fast_masks[k]) for k in slow_masks)  # per-sequence sums: same bits
    evalset = tiny_ids(n=6, seed=2).flatten()
    assert ppl(fast, evalset, 7, 4) == pytest.approx(ppl(slow, evalset, None, 1), rel=1e-3)
