"""The batch is a speed/memory knob only: "auto" picks it from a memory budget, and since the statistics are
summed one sequence at a time, float32 pruning gives bit-identical weights for any batch size."""
import copy

import pytest
import torch
from tiny import DENSE, MOE, tiny_ids, tiny_model
from transformers import LlamaConfig

from dlp.errors import UserError
from dlp.registry import make_criterion
from dlp.walk.batching import (
    MAX_AUTO_BATCH,
    WORKING_SET_SHARE,
    auto_batch_size,
    check_batch_size,
    floor_bytes,
    resolve_batch_size,
    working_set_per_token,
)
from dlp.walk.engine import walk
from dlp.walk.prune import prune_model
from dlp.walk.stats import SQNORM, LinearStats


@pytest.mark.parametrize("family", DENSE)
@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt"])
def test_float32_pruning_does_not_depend_on_the_batch(family, criterion):
    base, calib = tiny_model(family), tiny_ids(n=7, seed=3)  # 7: batches of 3 leave a ragged last batch
    weights = {}
    for batch_size in (1, 3, 7, "auto"):
        model = copy.deepcopy(base)
        prune_model(model, calib, make_criterion(criterion), [0.5, 0.7, 0.6], batch_size=batch_size, progress=False)
        weights[batch_size] = [p.detach().clone() for p in model.parameters()]
    for batch_size in (3, 7, "auto"):
        assert all(torch.equal(a, b) for a, b in zip(weights[1], weights[batch_size])), batch_size
    assert any(int((p == 0).sum()) > 0 for p in weights[1])


@pytest.mark.parametrize("family", MOE)
def test_moe_pruning_is_reproducible_for_a_batch_size(family):
    """Routed experts see tokens gathered from the batch (tiny.DENSE says why results differ across batch
    sizes); the same batch size gives the same weights to the bit."""
    base, calib = tiny_model(family), tiny_ids(n=7, seed=3)
    runs = []
    for _ in range(2):
        model = copy.deepcopy(base)
        prune_model(model, calib, make_criterion("sparsegpt"), [0.5, 0.7, 0.6], batch_size=3, progress=False)
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_statistics_are_summed_per_sequence():
    """A (batch, seqlen, width) input and the same tokens flattened, as OPT hands fc1/fc2, sum the same way:
    per sequence in float32, sequences added in float64, so both equal adding the sequences one by one."""
    x = torch.randn(5, 16, 24) * 100
    one_by_one, batched, flat = (LinearStats(24, x.device, frozenset({SQNORM}), seqlen=16) for _ in range(3))
    for seq in x:
        one_by_one.add(seq[None])
    batched.add(x)
    flat.add(x.reshape(-1, 24))
    assert torch.equal(one_by_one.sqnorm, batched.sqnorm) and torch.equal(one_by_one.sqnorm, flat.sqnorm)
    expected = sum(seq.square().sum(0).double() for seq in x)
    assert torch.equal(batched.sqnorm, expected)


def test_working_set_counted_from_the_config_by_hand():
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)
    cfg._attn_implementation = "sdpa"
    # bf16: 2 bytes x (6 x 64 + 3 x 128) + float32 copy of the widest input, 4 x 128
    assert working_set_per_token(cfg, torch.bfloat16, 32) == 2 * (384 + 384) + 512
    assert working_set_per_token(cfg, torch.float32, 32) == 4 * (384 + 384) + 512
    cfg._attn_implementation = "eager"  # plus the float32 score row of every head
    assert working_set_per_token(cfg, torch.float32, 32) == 4 * (384 + 384) + 512 + 4 * 4 * 32


def test_auto_batch_stays_within_the_budget():
    model = tiny_model("llama")
    for nsamples, seqlen in ((8, 32), (64, 32), (300, 16), (4, 64)):
        b = auto_batch_size(model, nsamples, seqlen)
        per_sequence = working_set_per_token(model.config, torch.float32, seqlen) * seqlen
        budget = WORKING_SET_SHARE * floor_bytes(model, nsamples, seqlen)
        assert 1 <= b <= min(nsamples, MAX_AUTO_BATCH)
        assert b == 1 or b * per_sequence <= budget  # within the budget ...
        assert b == min(nsamples, MAX_AUTO_BATCH) or (b + 1) * per_sequence > budget  # ... and the largest such
    # floor: the weights plus one block's activations in and out
    weights = sum(p.numel() * 4 for p in model.parameters())
    assert floor_bytes(model, 8, 32) == weights + 2 * 8 * 32 * 64 * 4


def test_walk_reports_the_batch_it_used():
    model, ids = tiny_model("llama"), tiny_ids(n=6)
    assert walk(model, ids, lambda *a: False, frozenset(), batch_size=4, progress=False).batch_size == 4
    auto = walk(model, ids, lambda *a: False, frozenset(), batch_size="auto", progress=False).batch_size
    assert auto == resolve_batch_size("auto", model, ids) == auto_batch_size(model, 6, 32)


@pytest.mark.parametrize("bad", [0, -2, "eight", 2.5, None, True])
def test_bad_batch_size_is_one_clear_error(bad):
    with pytest.raises(UserError, match="batch_size must be a positive integer or 'auto'"):
        check_batch_size(bad)
    with pytest.raises(UserError):
        walk(tiny_model("llama"), tiny_ids(n=2), lambda *a: False, frozenset(), batch_size=bad, progress=False)
