"""The engine walks every family correctly: captured kwargs replay the model's own forward exactly."""
import pytest
import torch
from tiny import DENSE, FAMILIES, MOE, tiny_ids, tiny_model

from dlp.methods.pattern import NM
from dlp.registry import make_criterion
from dlp.walk.engine import walk
from dlp.walk.prune import prune_model
from dlp.walk.selfcheck import model_block_outputs
from dlp.walk.sparsity import measure_sparsity
from dlp.walk.structure import find_blocks, find_linears


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_walk_replays_the_models_forward(family, batch_size):
    model = tiny_model(family)
    ids = tiny_ids(n=8)
    result = walk(model, ids, lambda *a: False, frozenset(), batch_size=batch_size, progress=False, keep_outputs=True)
    assert result.timings["replay"] == 0.0  # nothing changed, so no second pass
    assert torch.allclose(result.outputs, model_block_outputs(model, ids)[-1], atol=1e-5, rtol=1e-4)


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
    # Statistics are summed per sequence (dlp.walk.stats), so in float32 even SparseGPT's weights agree to the bit.
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
    from dlp.walk.stats import HESSIAN, attach
    model = tiny_model("llama")
    block = find_blocks(model).blocks[0]
    from dlp.walk.structure import find_linears
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


def _walk_recording(model, ids, needs, stop_early, changes=True, replays=True):
    """Walk with a visitor that copies every block's statistics and (when `changes`) scales one weight, so the
    replay matters; returns the copies, the walk, and how many batches reached each block's last Linear."""
    seen, reached = [], []

    def visit(index, block, linears, stats):
        seen.append({n: (s.sqnorm.clone() if s.sqnorm is not None else None,
                         s.full_gram().clone() if s.gram is not None else None, s.nsamples)
                     for n, s in stats.items()})
        if changes:
            next(iter(linears.values())).weight.data.mul_(0.5)
        return changes

    blocks = find_blocks(model).blocks
    last_names = [list(find_linears(b))[-1] for b in blocks]
    probes = [find_linears(b)[n].register_forward_hook(lambda *a, i=i: reached.append(i))
              for i, (b, n) in enumerate(zip(blocks, last_names))]
    result = walk(model, ids, visit, needs, batch_size=3, progress=False, keep_outputs=True, replays=replays,
                  stop_early=stop_early)
    for p in probes:
        p.remove()
    return seen, result, reached


@pytest.mark.parametrize("family", DENSE)
def test_statistics_pass_stopped_at_the_last_input_changes_nothing(family):
    """A prune walk's statistics pass ends each batch (after the first) at the last Linear's input: the same
    statistics to the bit, the same outputs, and the last Linear really multiplied fewer times."""
    import copy

    from dlp.walk.stats import HESSIAN, SQNORM
    base, ids = tiny_model(family), tiny_ids(n=8)  # batches of 3, 3, 2
    needs = frozenset({SQNORM, HESSIAN})
    whole_stats, whole, whole_reached = _walk_recording(copy.deepcopy(base), ids, needs, stop_early=False)
    cut_stats, cut, cut_reached = _walk_recording(copy.deepcopy(base), ids, needs, stop_early=True)
    assert len(whole_stats) == len(cut_stats) == 3
    for a, b in zip(whole_stats, cut_stats):
        for name in a:
            assert a[name][2] == b[name][2] == 8
            for x, y in zip(a[name][:2], b[name][:2]):
                assert torch.equal(x, y), name
    assert torch.equal(whole.outputs, cut.outputs)
    # Whole: 3 batches in the statistics pass + 3 in the replay, per block. Cut: 1 + 3.
    assert [whole_reached.count(i) for i in range(3)] == [6, 6, 6]
    assert [cut_reached.count(i) for i in range(3)] == [4, 4, 4]
    # The products not done, as the benchmark counts them: the last Linear for 5 of 8 sequences, per block.
    last = list(find_linears(find_blocks(base).blocks[0]).values())[-1]
    assert whole.skipped_flops == 0 and whole.replayed_blocks == cut.replayed_blocks == 3
    assert cut.skipped_flops == 3 * 2 * last.in_features * last.out_features * 5 * 32


def test_a_cut_pass_whose_visitor_changed_nothing_is_replayed():
    """`replays=True` but the visitor left a block alone (a block at sparsity 0): the cut statistics pass left
    its outputs incomplete, so the block is replayed, and the outputs equal the model's own forward."""
    from dlp.walk.stats import SQNORM
    model, ids = tiny_model("llama"), tiny_ids(n=8)
    seen, result, reached = _walk_recording(model, ids, frozenset({SQNORM}), stop_early=True, changes=False)
    # 1 cut-short statistics pass + a whole replay per block (3 batches), to refill the outputs.
    assert [reached.count(i) for i in range(3)] == [4, 4, 4]
    assert torch.allclose(result.outputs, model_block_outputs(model, ids)[-1], atol=1e-5, rtol=1e-4)


def test_last_block_is_neither_finished_nor_replayed_when_its_outputs_are_unread():
    """Nothing reads the last block's outputs unless asked (`keep_outputs`): its statistics pass stops at the
    last input and it is not replayed; earlier blocks run whole once (no replay: nothing changed)."""
    from dlp.walk.stats import SQNORM
    model, ids = tiny_model("llama"), tiny_ids(n=8)
    blocks = find_blocks(model).blocks
    reached = []
    probes = [list(find_linears(b).values())[-1].register_forward_hook(lambda *a, i=i: reached.append(i))
              for i, b in enumerate(blocks)]
    walk(model, ids, lambda *a: False, frozenset({SQNORM}), batch_size=3, progress=False)
    for p in probes:
        p.remove()
    assert [reached.count(i) for i in range(3)] == [3, 3, 1]


def test_stop_counts_a_linear_called_twice():
    """The cut comes after the last Linear *call* a batch makes, learnt from the first batch: a Linear used
    twice in a block still gets both inputs into its statistics."""
    import torch.nn as nn

    from dlp.walk.engine import BlockCall, StopAfterLastInput, run_block
    from dlp.walk.stats import SQNORM, attach

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            return x + self.a(torch.relu(self.b(self.a(x))))  # `a` sees x, then relu(b(a(x)))

    torch.manual_seed(0)
    block, x = Twice(), torch.randn(6, 5, 8)
    linears = {"a": block.a, "b": block.b}
    with torch.no_grad():
        expected = x.reshape(-1, 8).square().sum(0).double()
        second = torch.relu(block.b(block.a(x))).reshape(-1, 8).square().sum(0).double()
        stats, handles = attach(linears, frozenset({SQNORM}), share=False, seqlen=5)
        stop = StopAfterLastInput(linears)
        whole = run_block(block, x, [BlockCall((), {})] * 3, 2, out=None, stop=stop)
    for h in handles:
        h.remove()
    stop.remove()
    assert not whole and stop.per_batch == 3
    assert torch.allclose(stats["a"].sqnorm, expected + second, rtol=1e-6)
    assert torch.allclose(stats["b"].sqnorm, block.a(x).detach().reshape(-1, 8).square().sum(0).double(), rtol=1e-6)


@pytest.mark.parametrize("family", MOE)
def test_blocks_with_routed_experts_are_never_cut(family):
    """The Linear calls of a block with routed experts follow the routing, so a count learnt from one batch
    could cut another before an expert took its input: such blocks run their statistics pass whole, and the
    statistics equal those of a walk that never cuts."""
    import copy

    from dlp.walk.stats import HESSIAN, SQNORM
    base, ids = tiny_model(family), tiny_ids(n=8)
    needs = frozenset({SQNORM, HESSIAN})
    whole_stats, whole, _ = _walk_recording(copy.deepcopy(base), ids, needs, stop_early=False)
    cut_stats, cut, _ = _walk_recording(copy.deepcopy(base), ids, needs, stop_early=True)
    assert cut.skipped_flops == 0
    for a, b in zip(whole_stats, cut_stats):
        assert a.keys() == b.keys()
        for name in a:
            for x, y in zip(a[name][:2], b[name][:2]):
                assert torch.equal(x, y), name
    assert torch.equal(whole.outputs, cut.outputs)


def test_stop_never_cuts_a_block_whose_first_batch_skipped_a_linear():
    """A Linear that the first batch did not call (a branch, an expert nobody was routed to) may be called by a
    later batch: counting calls from the first batch would cut that batch before it. No cut then."""
    import torch.nn as nn

    from dlp.walk.engine import BlockCall, StopAfterLastInput, run_block
    from dlp.walk.stats import SQNORM, attach

    class Branch(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            y = x + self.a(x)
            return y + self.b(x) if x.sum() > 0 else y

    torch.manual_seed(0)
    block = Branch()
    x = torch.cat([-torch.rand(2, 3, 4), torch.rand(2, 3, 4)])  # batch 1 takes no branch, batch 2 does
    linears = {"a": block.a, "b": block.b}
    with torch.no_grad():
        stats, handles = attach(linears, frozenset({SQNORM}), share=False, seqlen=3)
        stop = StopAfterLastInput(linears)
        whole = run_block(block, x, [BlockCall((), {})] * 2, 2, out=None, stop=stop)
    for h in handles:
        h.remove()
    stop.remove()
    assert whole and stop.per_batch == 0
    assert torch.allclose(stats["b"].sqnorm, x[2:].reshape(-1, 4).square().sum(0).double())


def _distinct_tensors(calls) -> int:
    seen = set()

    def visit(obj):
        if isinstance(obj, torch.Tensor):
            seen.add(id(obj))
        elif isinstance(obj, (tuple, list)):
            for o in obj:
                visit(o)
        elif isinstance(obj, dict):
            for o in obj.values():
                visit(o)
    for call in calls:
        visit(call.args)
        visit(call.kwargs)
    return len(seen)


@pytest.mark.parametrize("family,per_type", [("llama", 0), ("mistral", 0), ("gemma3", 2), ("qwen3", 1)])
def test_arguments_shared_by_blocks_are_held_once(family, per_type):
    """The capture keeps what the model passed each block by reference: a batch holds block 0's tensors plus
    only what another layer type adds (Gemma-3: the other mask and the other rotary pair; Qwen3: the sliding
    mask), not a copy per block."""
    from dlp.walk.engine import capture_inputs
    model = tiny_model(family)
    layout = find_blocks(model)
    cap = capture_inputs(model, layout, tiny_ids(n=4), batch_size=2)
    assert len(cap.calls) == 2 and all(len(per_block) == 3 for per_block in cap.calls)
    for per_block in cap.calls:
        assert _distinct_tensors(per_block) == _distinct_tensors(per_block[:1]) + per_type


def test_watch_walks_reports_every_walk_inside_it(tmp_path, monkeypatch):
    """How a caller that does not call `walk` sees the work done (the bench timing an allocation): DLP's dense
    profile is one walk (nothing changed: no replay; only the last block, whose outputs nothing reads, cut short);
    a prune inside the same block is the second (every block cut, two replayed); a walk outside is not reported
    and the list is closed when the block ends."""
    from dlp.registry import make_allocator
    from dlp.walk.engine import _WATCHERS, watch_walks

    monkeypatch.setenv("DLP_CACHE", str(tmp_path))  # an empty profile cache: the profile walk runs
    model, ids = tiny_model("llama"), tiny_ids()
    with watch_walks() as walks:
        targets = make_allocator("dlp").allocate(model, ids, 0.5, 4, progress=False).sparsities
        assert len(walks) == 1 and walks[0].replayed_blocks == 0 and walks[0].skipped_flops > 0
        pruned = prune_model(model, ids, make_criterion("wanda"), targets, batch_size=4, progress=False)
    assert walks[1] is pruned and pruned.replayed_blocks == 2 and pruned.skipped_flops > walks[0].skipped_flops
    prune_model(model, ids, make_criterion("wanda"), targets, batch_size=4, progress=False)
    assert len(walks) == 2 and _WATCHERS == []
