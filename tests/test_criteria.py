"""Invariants of the within-layer criteria on one Linear with known inputs."""
import pytest
import torch
import torch.nn as nn

from baselines.criteria import make_criterion
from baselines.criteria.pattern import NM, parse_pattern
from dlp.errors import UserError
from dlp.stats import HESSIAN, SQNORM, attach

ROWS, COLS, NSEQ, SEQ = 48, 256, 16, 128


def layer_and_stats(seed=0, needs=frozenset({SQNORM, HESSIAN})):
    torch.manual_seed(seed)
    layer = nn.Linear(COLS, ROWS, bias=False)
    # Correlated inputs (as in real activations) with columns of different scales, so input-aware criteria
    # differ from magnitude. The scales are shuffled: SparseGPT prunes each 128-column block to the same
    # sparsity, so sorted scales (all the important columns in one block) would be adversarial to it.
    mix = torch.randn(COLS, COLS) / 16 + torch.eye(COLS)
    scales = torch.linspace(0.25, 4.0, COLS)[torch.randperm(COLS)]
    x = (torch.randn(NSEQ, SEQ, COLS) @ mix) * scales
    stats, handles = attach({"l": layer}, needs)
    with torch.no_grad():
        layer(x)
    for h in handles:
        h.remove()
    stats["l"].nsamples = NSEQ
    return layer, stats["l"], x


def test_stats_match_hand_computation():
    _, st, x = layer_and_stats()
    flat = x.reshape(-1, COLS)
    assert torch.allclose(st.column_norm(), torch.sqrt((flat ** 2).sum(0) / NSEQ), rtol=1e-5)
    assert torch.allclose(st.hessian(), 2.0 / NSEQ * flat.t() @ flat, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_wanda_exact_per_row_counts_and_untouched_kept(sparsity):
    layer, st, _ = layer_and_stats()
    W = layer.weight.data.clone()
    new = make_criterion("wanda").prune(W.clone(), st, sparsity, None)
    pruned = new == 0
    assert (pruned.sum(1) == int(COLS * sparsity)).all()
    assert torch.equal(new[~pruned], W[~pruned])
    score = W.abs() * st.column_norm().unsqueeze(0)
    # Every pruned score in a row is <= every kept score in that row.
    worst_kept = score.masked_fill(pruned, float("inf")).min(1).values
    best_pruned = score.masked_fill(~pruned, -1).max(1).values
    assert (best_pruned <= worst_kept).all()


def test_wanda_differs_from_row_magnitude():
    layer, st, _ = layer_and_stats()
    W = layer.weight.data.clone()
    wanda = make_criterion("wanda").prune(W.clone(), st, 0.5, None) == 0
    by_magnitude = torch.zeros_like(wanda).scatter_(1, W.abs().sort(1)[1][:, :COLS // 2], True)
    assert not torch.equal(wanda, by_magnitude)


def test_magnitude_one_threshold_per_matrix():
    layer, st, _ = layer_and_stats()
    W = layer.weight.data.clone()
    new = make_criterion("magnitude").prune(W.clone(), st, 0.6, None)
    pruned = new == 0
    assert pruned.sum() == int(W.numel() * 0.6)
    assert W.abs()[pruned].max() <= W.abs()[~pruned].min()
    assert pruned.sum(1).unique().numel() > 1  # not per row
    assert torch.equal(new[~pruned], W[~pruned])


@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_sparsegpt_exact_per_block_sparsity_and_updates(sparsity):
    layer, st, _ = layer_and_stats()
    W = layer.weight.data.clone()
    new = make_criterion("sparsegpt").prune(W.clone(), st, sparsity, None)
    for start in range(0, COLS, 128):
        block = new[:, start:start + 128]
        assert (block == 0).sum() == int(block.numel() * sparsity)
    kept = new != 0
    assert not torch.allclose(new[kept], W[kept])  # the OBS update moved the kept weights



def test_sparsegpt_lower_output_error_than_wanda():
    layer, st, x = layer_and_stats()
    W = layer.weight.data.clone()
    flat = x.reshape(-1, COLS)
    errors = {}
    for name in ("wanda", "sparsegpt", "magnitude"):
        new = make_criterion(name).prune(W.clone(), st, 0.5, None)
        errors[name] = ((flat @ new.t()) - (flat @ W.t())).pow(2).sum().item()
    assert errors["sparsegpt"] < 0.9 * errors["wanda"]
    assert errors["wanda"] < errors["magnitude"]


def test_sparsegpt_dead_inputs_zeroed():
    layer, st, _ = layer_and_stats()
    st.gram[:, 5] = 0
    st.gram[5, :] = 0
    new = make_criterion("sparsegpt").prune(layer.weight.data.clone(), st, 0.5, None)
    assert (new[:, 5] == 0).all()


@pytest.mark.parametrize("name", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
def test_nm_groups(name, n, m):
    layer, st, _ = layer_and_stats()
    new = make_criterion(name).prune(layer.weight.data.clone(), st, n / m, NM(n, m))
    zeros = (new == 0).view(ROWS, COLS // m, m).sum(2)
    assert (zeros == n).all()


def test_pattern_validation():
    assert parse_pattern("unstructured", 0.7) is None
    assert parse_pattern("2:4", 0.5) == NM(2, 4)
    with pytest.raises(UserError, match="2:4 prunes exactly 0.5"):
        parse_pattern("2:4", 0.7)
    with pytest.raises(UserError):
        parse_pattern("4:2", 2.0)
    with pytest.raises(UserError):
        parse_pattern("two:four", 0.5)


def test_unknown_criterion():
    with pytest.raises(UserError, match="unknown criterion 'foo'"):
        make_criterion("foo")


def test_kthvalue_selection_equals_stable_sort_with_ties():
    """Scores drawn from four values (ties everywhere): the fast selection takes exactly the stable sort's first k."""
    from baselines.criteria.base import lowest_overall, lowest_per_row
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        rows, cols = torch.randint(1, 20, (2,), generator=g).tolist()
        score = torch.randint(0, 4, (rows, cols), generator=g).float()
        sparsity = torch.rand(1, generator=g).item()
        fast = lowest_per_row(score, sparsity)
        assert torch.equal(fast, lowest_per_row(score, sparsity, by_sort=True))
        assert (fast.sum(1) == int(cols * sparsity)).all()
        assert torch.equal(lowest_overall(score, sparsity), lowest_overall(score, sparsity, by_sort=True))
    # by hand: row [1, 0, 1, 1], k = 2 -> the 0 and the first 1
    assert lowest_per_row(torch.tensor([[1.0, 0.0, 1.0, 1.0]]), 0.5).tolist() == [[True, True, False, False]]
