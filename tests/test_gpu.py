"""What only a CUDA device can show; skipped elsewhere. experiments/gpu_acceptance.sh runs this file first, in
seconds, before the long benchmark, so that a device-only fault shows before the GPU time is spent."""
import math

import pytest
import torch
from tiny import tiny_ids, tiny_model

from dlp.evaluation.perplexity import window_losses
from dlp.registry import make_criterion
from dlp.walk.prune import prune_model
from dlp.walk.stats import HESSIAN, LinearStats
from dlp.walk.structure import find_blocks, find_linears

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


def _gram_error(x: torch.Tensor, mode: str | None) -> float:
    """Largest error of LinearStats' Gram matrix of x against a float64 sum, relative to the largest entry.
    `mode` forces float32 products into that precision (None: whatever LinearStats itself chooses)."""
    stats = LinearStats(x.shape[-1], CUDA, frozenset({HESSIAN}), seqlen=x.shape[1])
    before = torch.backends.cuda.matmul.fp32_precision
    try:
        if mode:
            torch.backends.cuda.matmul.fp32_precision = mode
        stats.add(x)
    finally:
        torch.backends.cuda.matmul.fp32_precision = before
    x64 = x.double().reshape(-1, x.shape[-1])
    exact = x64.t() @ x64
    return ((stats.full_gram().double() - exact).abs().max() / exact.abs().max()).item()


def test_gram_of_bfloat16_activations_loses_nothing_to_tf32_products():
    """dlp.walk.precision lets the Gram matrix of bfloat16 activations use TF32 products on a GPU, claiming it exact
    (8 significand bits fit TF32's 10): its error must be float32 accumulation's, not TF32 rounding's. The
    control shows this check can see TF32 rounding: the same mode on full float32 values errs ~10x more.
    (Simulated on a CPU for these shapes: float32 accumulation 4e-7 to 1e-6, TF32-rounded inputs 5.5e-5.)"""
    g = torch.Generator(device=CUDA).manual_seed(0)
    x = torch.randn(4, 512, 1536, device=CUDA, generator=g)
    assert _gram_error(x.to(torch.bfloat16), None) < 5e-6
    assert _gram_error(x, "tf32") > 2e-5  # control: float32 values rounded to TF32 do lose bits


def _wanda_pruned(device: torch.device):
    model = tiny_model("llama").to(device)
    prune_model(model, tiny_ids(8, 32).to(device), make_criterion("wanda"), [0.5] * len(find_blocks(model)),
                batch_size=4, progress=False)
    return model


def test_wanda_on_the_gpu_prunes_exact_row_counts_and_matches_the_cpu():
    """Same masks within float32 rounding of the statistics (a near-tie at the cut may flip), exactly
    floor(C_in / 2) per row, and the same perplexity within 0.1%."""
    cpu, gpu = _wanda_pruned(torch.device("cpu")), _wanda_pruned(CUDA)
    flipped = total = 0
    for bc, bg in zip(find_blocks(cpu).blocks, find_blocks(gpu).blocks):
        for name, lin in find_linears(bg).items():
            zeros = lin.weight == 0
            assert (zeros.sum(1) == lin.in_features // 2).all(), name
            flipped += (zeros.cpu() != (find_linears(bc)[name].weight == 0)).sum().item()
            total += zeros.numel()
    assert flipped <= 1e-3 * total
    ids = tiny_ids(4, 32, seed=3).reshape(-1)
    ppl = [math.exp(window_losses(m, ids.to(next(m.parameters()).device), 32, 4, 2, False).double().mean().item())
           for m in (cpu, gpu)]
    assert ppl[1] == pytest.approx(ppl[0], rel=1e-3)


def test_sparsegpt_on_the_gpu_in_bfloat16_keeps_its_sparsity_and_quality():
    """The bf16 path a GPU run takes (TF32 Gram, float32 factor and updates on the device): exactly half of
    every matrix pruned, and perplexity within 2% of the same pruning in float32 on the CPU."""
    ids = tiny_ids(8, 32)
    models = {}
    for device, dtype in ((torch.device("cpu"), torch.float32), (CUDA, torch.bfloat16)):
        model = tiny_model("llama").to(device=device, dtype=dtype)
        prune_model(model, ids.to(device), make_criterion("sparsegpt"), [0.5] * len(find_blocks(model)),
                    batch_size=4, progress=False)
        models[device.type] = model
    for lin in (lin for b in find_blocks(models["cuda"]).blocks for lin in find_linears(b).values()):
        assert (lin.weight == 0).sum().item() == lin.weight.numel() // 2
    ev = tiny_ids(4, 32, seed=3).reshape(-1)
    ppl = {k: math.exp(window_losses(m.float(), ev.to(next(m.parameters()).device), 32, 4, 2, False)
                       .double().mean().item()) for k, m in models.items()}
    assert ppl["cuda"] == pytest.approx(ppl["cpu"], rel=0.02)


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 0),
                    reason="2:4 sparse kernels need compute capability 8.0")
def test_two_four_kernels_give_the_dense_product_and_a_report():
    """The semi-structured sparse product of a 2:4 weight is the dense product of the same weight (float16
    accumulation aside), and the bench reports one row per shape x batch x length."""
    from torch.sparse import to_sparse_semi_structured

    from experiments.bench import sparse24 as bench_sparse24
    w = bench_sparse24.two_four(128, 128, torch.float16, CUDA)
    x = torch.randn(64, 128, dtype=torch.float16, device=CUDA)
    dense = torch.nn.functional.linear(x, w).float()
    sparse = torch.nn.functional.linear(x, to_sparse_semi_structured(w)).float()
    assert ((sparse - dense).abs().max() / dense.abs().max()).item() < 1e-2
    rows = bench_sparse24.measure(bench_sparse24.SHAPES["tiny"], [1, 4], [64], torch.float16, repeats=3)
    assert [(r["batch"], r["length"]) for r in rows] == [(1, 64), (4, 64)]
    assert all(r["sparse_weight_bytes"] < r["dense_weight_bytes"] for r in rows)
    assert "| proj | 128x128 | 1 x 64 |" in bench_sparse24.report(rows, "gpu", "float16")


def test_sparsegpt_column_loop_as_a_cuda_graph_matches_the_eager_loop():
    """The replayed graph runs the eager loop's kernels on the same operands: the same masks, the same weights
    (to float32 rounding, should a library pick another kernel inside the capture), across several column
    blocks and a narrower last block, for a stacked group."""
    from baselines.criteria.sparsegpt import SparseGPT
    g = torch.Generator(device=CUDA).manual_seed(0)
    x = torch.randn(2, 64, 320, device=CUDA, generator=g)
    weights = [torch.randn(rows, 320, device=CUDA, generator=g) for rows in (96, 160)]
    out = {}
    for graphs in (True, False):
        stats = LinearStats(320, CUDA, frozenset({HESSIAN}), seqlen=64)
        stats.add(x)
        stats.nsamples = 2
        criterion = SparseGPT()
        criterion.cuda_graphs = graphs
        out[graphs] = criterion.prune_group([w.clone() for w in weights], stats, 0.5, None)
        assert bool(criterion.graphs.graphs) == graphs  # the graph path really ran (and the eager one did not)
    for a, b in zip(out[True], out[False]):
        assert torch.equal(a == 0, b == 0)
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_cpu_offload_on_the_gpu_prunes_and_evaluates_as_the_model_held_whole(tmp_path):
    """Blocks in pinned host memory, the next one copied in on a side stream: the same kernels on the same
    operands as the model held on the device, so the same masks and losses; at most two blocks' weights were on
    the device at once."""
    from tiny import save_tiny

    from dlp.storage.models import load_model
    from dlp.walk.offload import offload_of
    folder = save_tiny(tmp_path / "llama")
    ids, ev = tiny_ids(8, 32), tiny_ids(4, 32, seed=3).reshape(-1)
    out = {}
    for mode in ("none", "cpu"):
        model, _tok, _prov = load_model(str(folder), "float32", "cuda", offload=mode)
        prune_model(model, ids.to(CUDA), make_criterion("sparsegpt"), [0.5] * 3, batch_size=4, progress=False)
        out[mode] = ({n: (p == 0).cpu() for n, p in model.named_parameters() if p.dim() == 2},
                     window_losses(model, ev.to(CUDA), 32, None, 2, False))
        if mode == "cpu":
            home = offload_of(model)
            assert home.peak_materialized <= 2 * max(home.sizes)
            assert all(p.device.type == "cpu" for b in find_blocks(model).blocks for p in b.parameters())
    assert all(torch.equal(out["cpu"][0][n], m) for n, m in out["none"][0].items())
    assert torch.equal(out["cpu"][1], out["none"][1])


def test_dlp_block_median_counted_on_the_gpu_is_the_exact_median():
    from dlp.methods.select import kth_smallest
    g = torch.Generator(device=CUDA).manual_seed(0)
    chunks = [torch.rand(1000, 37, device=CUDA, generator=g) * 3 for _ in range(3)]
    flat = torch.cat([c.flatten() for c in chunks])
    k = (flat.numel() - 1) // 2
    assert kth_smallest(lambda: iter(chunks), k) == torch.sort(flat).values[k].item()
