"""The engine walks every family correctly: captured kwargs replay the model's own forward exactly."""
import pytest
import torch

from baselines.criteria import make_criterion
from baselines.criteria.pattern import NM
from dlp.engine import walk
from dlp.prune import prune_model
from dlp.sparsity import measure_sparsity
from dlp.structure import find_blocks, find_linears
from tiny import FAMILIES, last_block_output, tiny_ids, tiny_model


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_walk_replays_the_models_forward(family, batch_size):
    model = tiny_model(family)
    ids = tiny_ids(n=8)
    result = walk(model, ids, lambda *a: False, frozenset(), batch_size=batch_size, progress=False, keep_outputs=True)
    assert result.timings["replay"] == 0.0  # nothing changed, so no second pass
    assert torch.allclose(result.outputs, last_block_output(model, ids), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("criterion", ["magnitude", "wanda", "sparsegpt"])
def test_prune_every_family(family, criterion):
    model = tiny_model(family)
    result = prune_model(model, tiny_ids(), make_criterion(criterion), [0.5] * 3, progress=False)
    assert result.blocks == 3
    actual = measure_sparsity(model)
    assert abs(actual["overall"] - 0.5) < 1e-3
    assert all(abs(s - 0.5) < 1e-3 for s in actual["per_block"])


def test_pruned_prefix_feeds_next_block():
    """Block i+1 is calibrated on the pruned blocks before it (replay), not on dense activations."""
    ids = tiny_ids()
    dense = []
    model = tiny_model("llama")
    walk(model, ids, lambda i, b, l, s: dense.append(s["self_attn.q_proj"].sqnorm.clone()) or False,
         frozenset({"sqnorm"}), progress=False)
    pruned = []

    def change_first(index, block, linears, stats):
        pruned.append(stats["self_attn.q_proj"].sqnorm.clone())
        if index == 0:
            for layer in linears.values():
                layer.weight.data.mul_(0.5)
        return index == 0
    walk(tiny_model("llama"), ids, change_first, frozenset({"sqnorm"}), progress=False)
    assert torch.allclose(dense[0], pruned[0])
    assert not torch.allclose(dense[1], pruned[1])


def masks(model):
    return [(p == 0) for n, p in model.named_parameters() if p.dim() == 2]


@pytest.mark.parametrize("criterion", ["magnitude", "wanda", "sparsegpt"])
def test_batched_and_one_at_a_time_agree(criterion):
    ids = tiny_ids(n=6)
    a, b = tiny_model("llama"), tiny_model("llama")
    prune_model(a, ids, make_criterion(criterion), [0.5] * 3, batch_size=1, progress=False)
    prune_model(b, ids, make_criterion(criterion), [0.5] * 3, batch_size=4, progress=False)
    # Statistics are summed per sequence (dlp.stats), so in float32 even SparseGPT's weights agree to the bit.
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert any(bool(m.any()) for m in masks(a))


@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt"])
def test_same_seed_same_masks(criterion):
    runs = []
    for _ in range(2):
        model = tiny_model("qwen2")
        prune_model(model, tiny_ids(), make_criterion(criterion), [0.6] * 3, progress=False)
        runs.append(masks(model))
    assert all(torch.equal(x, y) for x, y in zip(*runs))


def test_nm_through_the_engine():
    model = tiny_model("mistral")
    prune_model(model, tiny_ids(), make_criterion("wanda"), [0.5] * 3, pattern=NM(2, 4), progress=False)
    for block in find_blocks(model).blocks:
        w = block.mlp.down_proj.weight
        assert ((w == 0).view(w.shape[0], -1, 4).sum(2) == 2).all()


def test_linears_sharing_an_input_share_statistics():
    """q/k/v (and gate/up) see the same tensor: one Gram matrix serves them, equal to separate accumulation."""
    import torch.nn as nn

    from dlp.stats import HESSIAN, attach
    model = tiny_model("llama")
    block = find_blocks(model).blocks[0]
    from dlp.structure import find_linears
    linears = find_linears(block)
    stats, handles = attach(linears, frozenset({HESSIAN}))
    seen = {}
    probes = [layer.register_forward_hook(lambda m, i, o, n=n: seen.setdefault(n, []).append(i[0].reshape(-1, i[0].shape[-1])))
              for n, layer in linears.items()]
    walk_inputs = tiny_ids(n=4)
    with torch.no_grad():
        model(input_ids=walk_inputs[:2], use_cache=False)
        model(input_ids=walk_inputs[2:], use_cache=False)
    for h in handles + probes:
        h.remove()
    assert stats["self_attn.q_proj"] is stats["self_attn.k_proj"] is stats["self_attn.v_proj"]
    assert stats["mlp.gate_proj"] is stats["mlp.up_proj"]
    assert stats["self_attn.o_proj"] is not stats["self_attn.q_proj"]
    for name, xs in seen.items():
        x = torch.cat(xs)
        assert torch.allclose(stats[name].full_gram(), x.t() @ x, rtol=1e-4, atol=1e-4)


def test_magnitude_needs_no_calibration_pass():
    """Magnitude reads no statistics: no forward pass runs (calibration ids are not even looked at), and every
    matrix loses exactly floor(numel·s) of its smallest weights."""
    model = tiny_model("llama")
    before = {n: l.weight.detach().clone() for n, l in find_linears(find_blocks(model).blocks[1]).items()}
    calls = []
    handle = find_blocks(model).blocks[0].register_forward_pre_hook(lambda *a: calls.append(1))
    result = prune_model(model, None, make_criterion("magnitude"), [0.0, 0.5, 0.25], progress=False)
    handle.remove()
    assert calls == [] and result.blocks == 3 and result.timings["statistics"] == 0.0
    for name, layer in find_linears(find_blocks(model).blocks[1]).items():
        W = before[name]
        k = int(W.numel() * 0.5)
        pruned = layer.weight == 0
        assert int(pruned.sum()) == k and torch.equal(layer.weight[~pruned], W[~pruned])
        assert W[pruned].abs().max() <= W[~pruned].abs().min()
    assert all(int((l.weight == 0).sum()) == 0 for l in find_linears(find_blocks(model).blocks[0]).values())
