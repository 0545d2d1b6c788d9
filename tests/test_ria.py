"""RIA: its score by hand, its counts, and its masks against the authors' code on the same tensors."""
import authors
import pytest
import torch

from dlp.errors import UserError
from dlp.methods.pattern import NM
from dlp.registry import make_criterion


def test_score_by_hand_on_a_two_by_two():
    from baselines.criteria.ria import ria_scores

    class Stats:
        def column_norm(self):
            return torch.tensor([4.0, 9.0])
    weight = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
    # |W_ij|/column sum + |W_ij|/row sum, times ‖X_j‖^0.5 (2 and 3)
    expected = torch.tensor([[(1 / 4 + 1 / 3) * 2, (2 / 6 + 2 / 3) * 3], [(3 / 4 + 3 / 7) * 2, (4 / 6 + 4 / 7) * 3]])
    assert torch.allclose(ria_scores(weight, Stats(), 0.5), expected)


@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_one_threshold_per_matrix_prunes_exactly_floor_numel_s(sparsity):
    case = authors.load()
    stats = authors.our_stats(case)
    new = make_criterion("ria").prune(case["weight"].clone(), stats, sparsity, None)
    pruned = new == 0
    assert int(pruned.sum()) == int(case["weight"].numel() * sparsity)
    assert pruned.sum(1).unique().numel() > 1  # one threshold for the matrix, not per row
    assert torch.equal(new[~pruned], case["weight"][~pruned])


@pytest.mark.parametrize("key,options,sparsity,pattern", [
    ("0.5", {}, 0.5, None), ("0.7", {}, 0.7, None), ("0.5-per_row", {"per_row": True}, 0.5, None),
    ("2:4", {}, 0.5, NM(2, 4))])
def test_masks_agree_with_the_authors_code(key, options, sparsity, pattern):
    """Per matrix, the authors' `score <= sort(score)[k]` prunes k + 1 (prune.py:408-410); every other weight
    agrees. Per row and 2:4 agree everywhere."""
    case = authors.load()
    ours = make_criterion("ria", **options).prune(case["weight"].clone(), authors.our_stats(case), sparsity,
                                                  pattern) == 0
    theirs = case["ria"][key]
    differ = int((ours != theirs).sum())
    if key in ("0.5", "0.7"):
        assert differ == 1 and int(theirs.sum()) == int(ours.sum()) + 1 and bool((theirs | ~ours).all())
    else:
        assert differ == 0


def test_bad_exponent_is_one_line():
    with pytest.raises(UserError, match="ria a must be a number >= 0"):
        make_criterion("ria", a=-1)
