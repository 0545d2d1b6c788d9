"""What only a CUDA device can show; skipped elsewhere. experiments/bench_gpu_quick.sh runs this file first, in
seconds, before the long benchmark, so that a device-only fault shows before the GPU time is spent."""
import math

import pytest
import torch

from dlp.registry import make_criterion
from dlp.perplexity import window_losses
from dlp.prune import prune_model
from dlp.stats import HESSIAN, LinearStats
from dlp.structure import find_blocks, find_linears
from tiny import tiny_ids, tiny_model

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
    """dlp.precision lets the Gram matrix of bfloat16 activations use TF32 products on a GPU, claiming it exact
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
    from experiments import bench_sparse24
    w = bench_sparse24.two_four(128, 128, torch.float16, CUDA)
    x = torch.randn(64, 128, dtype=torch.float16, device=CUDA)
    dense = torch.nn.functional.linear(x, w).float()
    sparse = torch.nn.functional.linear(x, to_sparse_semi_structured(w)).float()
    assert ((sparse - dense).abs().max() / dense.abs().max()).item() < 1e-2
    rows = bench_sparse24.measure(bench_sparse24.SHAPES["tiny"], [1, 4], [64], torch.float16, repeats=3)
    assert [(r["batch"], r["length"]) for r in rows] == [(1, 64), (4, 64)]
    assert all(r["sparse_weight_bytes"] < r["dense_weight_bytes"] for r in rows)
    assert "| proj | 128x128 | 1 x 64 |" in bench_sparse24.report(rows, "gpu", "float16")
