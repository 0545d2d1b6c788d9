"""Where a dense forward pass spends its time: matrix products, the attention kernel, everything else.

The bench's "share of peak" counts only the decoder's matrix products (experiments.bench.flops), so a pass can be far from
the peak for two reasons: slow products, or time spent outside them. This splits one batch's forward pass
(the model's own code, profiled by torch.profiler on the CPU) into those parts, so the report can say which:
the attention kernel and the element-wise work of norms, activations, rotary embeddings and residuals are
defined by the model, and an engine that replays the model's own layers cannot make them faster (the shares
measured on the embedded model are in results/bench.md).
"""
import torch
from torch.profiler import ProfilerActivity, profile

from dlp.walk.compute_dtype import compute_dtype_of, computing

# aten ops that are matrix products (their self time is the product itself; aten::matmul and aten::linear
# only dispatch to these).
PRODUCTS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_mkldnn_matmul")
ATTENTION = ("scaled_dot_product", "attention")


def time_shares(model, ids: torch.Tensor) -> dict | None:
    """Shares of self CPU time in one forward pass of `ids` (a batch of sequences) through the decoder, after
    one unprofiled warm-up pass: {"products", "attention", "other", "seconds"}. None on a GPU (the profiler's
    CPU times there are launch overheads, not the work)."""
    device = model.get_input_embeddings().weight.device
    if device.type != "cpu":
        return None
    base = model.get_decoder() if hasattr(model, "get_decoder") else model
    with torch.no_grad(), computing(compute_dtype_of(model), device):  # as the engine runs it (dlp.walk.compute_dtype)
        base(input_ids=ids, use_cache=False)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            base(input_ids=ids, use_cache=False)
    totals = {"products": 0.0, "attention": 0.0, "other": 0.0}
    for event in prof.key_averages():
        name = event.key
        part = ("products" if name in PRODUCTS else
                "attention" if any(a in name for a in ATTENTION) else "other")
        totals[part] += event.self_cpu_time_total
    whole = sum(totals.values())
    if whole <= 0:
        return None
    return {**{k: v / whole for k, v in totals.items()}, "seconds": whole / 1e6}
