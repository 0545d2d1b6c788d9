"""Block offload: blocks kept in host memory (`cpu`) or in the checkpoint's files (`disk`) give the masks and the
perplexity of the model held whole, bit for bit on a CPU, and only the visited block is ever on the device (or,
for `disk`, materialised at all)."""
import pytest
import torch
from tiny import save_tiny, tiny_ids

from dlp.evaluation.perplexity import window_losses
from dlp.registry import make_allocator, make_criterion
from dlp.storage.models import load_model
from dlp.walk.offload import CpuOffload, DiskOffload, offload_of, resident_blocks, streaming
from dlp.walk.prune import prune_model
from dlp.walk.selfcheck import check_walk
from dlp.walk.sparsity import measure_sparsity
from dlp.walk.structure import find_blocks, find_linears

MODES = ("none", "cpu", "disk")


def _load(folder, mode, tmp_path, family_dtype="float32"):
    model, _tok, _prov = load_model(str(folder), family_dtype, "cpu", offload=mode,
                                    offload_dir=tmp_path / f"offload-{mode}")
    return model


def _masks(model) -> dict[str, torch.Tensor]:
    return {f"{i}.{name}": (lin.weight == 0).clone() for i, block in resident_blocks(model)
            for name, lin in find_linears(block).items()}


def _weights(model) -> dict[str, torch.Tensor]:
    return {f"{i}.{name}": lin.weight.detach().clone() for i, block in resident_blocks(model)
            for name, lin in find_linears(block).items()}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("offload")
    return {family: save_tiny(tmp / family, family) for family in ("llama", "gemma3", "opt")}


@pytest.mark.parametrize("family", ["llama", "gemma3", "opt"])
@pytest.mark.parametrize("criterion,allocation", [("wanda", "dlp"), ("sparsegpt", "uniform"), ("magnitude", "owl")])
def test_offloaded_pruning_gives_the_same_masks_weights_and_perplexity(folders, tmp_path, family, criterion,
                                                                       allocation, monkeypatch):
    monkeypatch.setenv("DLP_CACHE", str(tmp_path / "cache"))
    calib, ev = tiny_ids(8, 32), tiny_ids(4, 32, seed=3).reshape(-1)
    out = {}
    for mode in MODES:
        model = _load(folders[family], mode, tmp_path)
        allocation_ = make_allocator(allocation).allocate(model, calib, 0.5, 4, progress=False,
                                                          model_id={"mode": mode})
        prune_model(model, calib, make_criterion(criterion), allocation_.sparsities, batch_size=4, progress=False)
        losses = window_losses(model, ev, 32, None, 2, False)
        out[mode] = (allocation_.sparsities, _weights(model), losses, measure_sparsity(model)["overall"])
    for mode in ("cpu", "disk"):
        assert out[mode][0] == out["none"][0]
        assert out[mode][1].keys() == out["none"][1].keys()
        for key, w in out["none"][1].items():
            assert torch.equal(out[mode][1][key], w), (mode, key)
        assert torch.equal(out[mode][2], out["none"][2]), mode
        assert out[mode][3] == out["none"][3]


def test_cpu_offload_keeps_every_other_block_off_the_device(folders, tmp_path):
    """While block i is visited, its parameters are the visit's own copies and every other block's are the host
    tensors (on a CPU nothing moves, so placement is seen by identity of storage); after the walk all are host
    tensors again, and a pruned block's host tensors hold its zeros."""
    model = _load(folders["llama"], "cpu", tmp_path)
    home = offload_of(model)
    assert isinstance(home, CpuOffload)
    blocks = find_blocks(model).blocks

    def on_host(index):
        return all(p.data_ptr() == home.host[index][key].data_ptr() for key, p in block_params(blocks[index]))

    seen = []

    def visit(index, block, linears, stats):
        seen.append(index)
        assert not on_host(index)
        assert all(on_host(j) for j in range(len(blocks)) if j != index)
        for lin in linears.values():
            lin.weight.data[:, 0] = 0
        return True

    from dlp.walk.engine import walk
    walk(model, tiny_ids(4, 32), visit, frozenset({"sqnorm"}), batch_size=2, progress=False)
    assert seen == list(range(len(blocks)))
    assert all(on_host(j) for j in range(len(blocks)))
    assert all((home.host[i]["self_attn.q_proj.weight"][:, 0] == 0).all() for i in range(len(blocks)))


def block_params(block):
    return [(name, p) for name, p in block.named_parameters()]


def _materialised(model) -> list[int]:
    return [i for i, block in enumerate(find_blocks(model).blocks)
            if any(p.device.type != "meta" for p in block.parameters())]


def test_disk_offload_materialises_one_block_at_a_time(folders, tmp_path, monkeypatch):
    """Through the self-check, the allocation pass, the prune, perplexity and measuring: at every block visit and
    every block forward, exactly one block has real weights; afterwards none, and the pruned blocks are in the
    offload folder, one file each."""
    monkeypatch.setenv("DLP_CACHE", str(tmp_path / "cache"))
    model = _load(folders["llama"], "disk", tmp_path)
    home = offload_of(model)
    assert isinstance(home, DiskOffload)
    blocks = find_blocks(model).blocks
    assert _materialised(model) == []
    seen = []

    def spy(module, _args, _out):  # after the forward, before a streaming pass sends the block back
        if "forward" in module.__dict__:  # bypassed (capturing inputs, or the head's pass): no weights used
            return
        index = [i for i, b in enumerate(blocks) if b is module][0]
        assert _materialised(model) == [index]
        seen.append(index)

    handles = [b.register_forward_hook(spy) for b in blocks]
    calib = tiny_ids(8, 32)
    check_walk(model, calib[:1])
    sparsities = make_allocator("dlp").allocate(model, calib, 0.5, 4, progress=False, model_id={}).sparsities
    prune_model(model, calib, make_criterion("wanda"), sparsities, batch_size=4, progress=False)
    window_losses(model, tiny_ids(4, 32, seed=3).reshape(-1), 32, None, 2, False)
    sparsity = measure_sparsity(model)
    for h in handles:
        h.remove()
    assert _materialised(model) == []
    assert len(seen) >= 5 * len(blocks)  # self-check (twice), profile, prune (two passes), perplexity
    one_block = sum(p.numel() * p.element_size() for p in blocks[0].parameters())
    assert home.peak_materialized == one_block
    assert sorted(p.name for p in (tmp_path / "offload-disk").iterdir()) == [
        f"block-{i:05d}.safetensors" for i in range(len(blocks))]
    # The files written hold the pruned weights: their zeros, counted straight from them, are what was measured.
    from safetensors.torch import load_file
    zeros = total = 0
    for path in sorted((tmp_path / "offload-disk").iterdir()):
        for key, t in load_file(path).items():
            if key.endswith("proj.weight"):
                zeros, total = zeros + int((t == 0).sum()), total + t.numel()
    assert sparsity["overall"] == zeros / total
    assert abs(zeros / total - 0.5) < 0.01


def test_streaming_forward_matches_the_model_held_whole(folders, tmp_path):
    """The harness's way (the model called whole, blocks streamed by hooks) gives the same logits, and leaves no
    block on the device after the pass, also when the pass stops early."""
    ids = tiny_ids(2, 16)
    whole = _load(folders["gemma3"], "none", tmp_path)
    for mode in ("cpu", "disk"):
        model = _load(folders["gemma3"], mode, tmp_path)
        with torch.no_grad(), streaming(model):
            logits = model(input_ids=ids, use_cache=False).logits
        assert torch.equal(logits, whole(input_ids=ids, use_cache=False).logits)
        if mode == "disk":
            assert _materialised(model) == []
        assert not offload_of(model).resident


def test_offload_refuses_what_it_cannot_do(folders, tmp_path):
    from dlp.errors import UserError

    with pytest.raises(UserError, match="unknown offload 'gpu'"):
        load_model(str(folders["llama"]), "float32", "cpu", offload="gpu")
    with pytest.raises(UserError, match="does not combine with model.device_map"):
        load_model(str(folders["llama"]), "float32", "cpu", device_map="auto", offload="cpu")
    moe = save_tiny(tmp_path / "mixtral", "mixtral")
    with pytest.raises(UserError, match="routed experts"):
        load_model(str(moe), "float32", "cpu", offload="cpu")
    with pytest.raises(UserError, match="caps a CUDA device"):
        load_model(str(folders["llama"]), "float32", "cpu", device_memory_gib=10)


@pytest.mark.slow
def test_bench_offload_runs_the_command_line_three_ways_and_they_agree(workspace, tmp_path):
    """The report's command on the tiny workspace model: three processes, the same perplexity and sparsities."""
    import json
    import subprocess
    import sys

    from conftest import tiny_overrides

    from dlp.storage.paths import ROOT
    overrides = [o for o in tiny_overrides(workspace) if not o.startswith(("results_dir", "progress", "wandb"))]
    done = subprocess.run([sys.executable, "-m", "experiments.bench.offload", "--out", str(tmp_path / "off"),
                           *overrides, "criterion=sparsegpt"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-1500:]
    rows = json.loads((tmp_path / "off.json").read_text())["rows"]
    assert list(rows) == ["none", "cpu", "disk"]
    assert len({r["ppl"] for r in rows.values()}) == 1
    assert [r["offload"]["mode"] for r in rows.values()] == ["none", "cpu", "disk"]
    assert rows["disk"]["offload"]["blocks_written"] == 3
    assert "All three agree exactly." in (tmp_path / "off.md").read_text()
