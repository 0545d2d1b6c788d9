"""DSnoT: its statistics by hand, the invariants of its swaps, and its masks against the authors' code."""
import authors
import pytest
import torch

from dlp.errors import UserError
from dlp.methods.pattern import NM
from dlp.registry import make_criterion, make_refinement


def test_mean_and_variance_statistics_by_hand():
    """Σ_tokens x / N, and each sequence's own population variance averaged over sequences by their tokens."""
    case = authors.load()
    x = case["inputs"].double()
    stats = authors.our_stats(case)
    assert torch.allclose(stats.mean_sum().double(), x.sum((0, 1)) / x.shape[0], rtol=1e-5, atol=1e-5)
    assert torch.allclose(stats.variance().double(), x.var(1, unbiased=False).mean(0), rtol=1e-5)
    theirs = case["authors_stats"]
    assert torch.allclose(stats.mean_sum(), theirs["sum_metric_row"], rtol=1e-5, atol=1e-5)
    assert torch.allclose(stats.variance(), theirs["var"], rtol=1e-5)
    assert torch.allclose(stats.column_norm().square(), theirs["scaler_row"], rtol=1e-5)


def refined(case, key, pattern=None, **options):
    sparsity = 0.5 if pattern else float(key)
    stats = authors.our_stats(case)
    dense = case["weight"].clone()
    pruned = make_criterion("wanda").prune(dense.clone(), stats, sparsity, pattern)
    return dense, pruned, make_refinement("dsnot", **options).refine(dense, pruned.clone(), stats, sparsity,
                                                                      pattern, "self_attn.q_proj")


@pytest.mark.parametrize("key,pattern", [("0.5", None), ("0.7", None), ("2:4", NM(2, 4))])
def test_masks_agree_with_the_authors_code(key, pattern):
    case = authors.load()
    dense, pruned, new = refined(case, key, pattern)
    assert torch.equal(pruned == 0, case["dsnot"][key]["initial"])  # the same Wanda mask to start from
    assert torch.equal(new == 0, case["dsnot"][key]["refined"])
    assert int(((pruned == 0) != (new == 0)).sum()) > 100  # it did swap


@pytest.mark.parametrize("key,pattern", [("0.5", None), ("0.7", None), ("2:4", NM(2, 4))])
def test_swaps_keep_every_rows_count_and_regrow_dense_values(key, pattern):
    case = authors.load()
    dense, pruned, new = refined(case, key, pattern, threshold=0.0)
    was, now = pruned == 0, new == 0
    assert torch.equal(was.sum(1), now.sum(1))
    if pattern:
        assert (now.view(now.shape[0], -1, 4).sum(2) == 2).all()
    regrown = was & ~now
    assert regrown.any() and torch.equal(new[regrown], dense[regrown])
    assert torch.equal(new[~now & ~was], pruned[~now & ~was])


def test_the_error_it_tracks_shrinks():
    """e_i = Σ_{j pruned} W_ij·mean_sum_j, recomputed from the masks: smaller in total after the swaps."""
    case = authors.load()
    dense, pruned, new = refined(case, "0.5")
    contribution = dense * authors.our_stats(case).mean_sum()
    before = (contribution * (pruned == 0)).sum(1).abs().sum()
    after = (contribution * (new == 0)).sum(1).abs().sum()
    assert after < 0.5 * before


def test_skipped_matrices_keep_the_criterions_mask():
    case = authors.load()
    stats = authors.our_stats(case)
    pruned = make_criterion("wanda").prune(case["weight"].clone(), stats, 0.5, None)
    dsnot = make_refinement("dsnot")
    assert dsnot.refine(case["weight"], pruned, stats, 0.5, None, "mlp.up_proj") is pruned
    assert not torch.equal(make_refinement("dsnot", skip="none").refine(case["weight"], pruned, stats, 0.5, None,
                                                                         "mlp.up_proj"), pruned)


@pytest.mark.parametrize("options,message", [({"cycles": 0}, "dsnot cycles must be an integer >= 1"),
                                             ({"threshold": -1}, "dsnot threshold must be a number >= 0"),
                                             ({"skip": "attn"}, "dsnot skip must be one of none, mlp, self_attn")])
def test_bad_settings_are_one_line(options, message):
    with pytest.raises(UserError, match=message):
        make_refinement("dsnot", **options)
