"""How many calibration sequences the engine pushes through a block at once: a number, or "auto".

Memory during a walk is the weights, the calibration activations in and out of one block, one block's
statistics, and a batch's working tensors (MLP intermediates, projections, norm upcasts, the statistics hook's
float32 copy of a sequence). Only the last grows with the batch. "auto" picks the largest batch whose estimated
working set stays within WORKING_SET_SHARE of the rest, so the whole peak stays near that floor. Larger
batches buy little speed on a CPU (one sequence's products are already large enough to run at full speed),
and since the statistics are summed per sequence (dlp.walk.stats), float32 results do not depend on the batch at all
(routed experts aside: dlp.walk.experts).
"""
import torch
import torch.nn as nn

from dlp.errors import UserError
from dlp.walk.devmem import available_bytes

AUTO = "auto"
WORKING_SET_SHARE = 0.10  # of the floor; the rest of a 20% margin is left to the allocator's slack
DEVICE_SHARE = 0.25  # of the device memory left when the batch is chosen
MAX_AUTO_BATCH = 64  # beyond this, products are large enough everywhere; more only costs memory


def working_set_per_token(config, dtype: torch.dtype, seqlen: int) -> int:
    """Bytes one token of a batch holds at the busiest point of a decoder block, counted from the config:
    the MLP's up/gate/activation outputs and about six hidden-width tensors (norm input and upcast, q/k/v/o,
    residual) in the model's dtype, plus the hook's float32 copy of the widest Linear input; with eager
    attention also the float32 score rows (SDPA's fused kernels do not hold them). An estimate: the bench
    reports measured peaks beside it (results/)."""
    hidden = config.hidden_size
    inner = getattr(config, "intermediate_size", None) or getattr(config, "ffn_dim", None) or 4 * hidden
    elt = torch.tensor([], dtype=dtype).element_size()
    per_token = elt * (6 * hidden + 3 * inner) + 4 * max(hidden, inner)
    if getattr(config, "_attn_implementation", None) == "eager":
        per_token += 4 * config.num_attention_heads * seqlen
    return per_token


def floor_parts(model: nn.Module, nsamples: int, seqlen: int) -> dict[str, int]:
    """Bytes of the weights and of one block's calibration activations in and out (the benchmark reports
    them apart, beside the statistics)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    elt = next(model.parameters()).element_size()
    return {"weights": weights, "activations": 2 * nsamples * seqlen * model.config.hidden_size * elt}


def floor_bytes(model: nn.Module, nsamples: int, seqlen: int) -> int:
    """Weights plus one block's calibration activations in and out: what a walk must hold whatever the batch."""
    return sum(floor_parts(model, nsamples, seqlen).values())


def auto_batch_size(model: nn.Module, nsamples: int, seqlen: int) -> int:
    dtype = next(model.parameters()).dtype
    per_sequence = working_set_per_token(model.config, dtype, seqlen) * seqlen
    budget = WORKING_SET_SHARE * floor_bytes(model, nsamples, seqlen)
    device = model.get_input_embeddings().weight.device
    if device.type == "cuda":
        # An offloaded model's floor is not on the device, and a capped process cannot use the whole card: the
        # batch's working set also stays within a quarter of what the device has left (dlp.walk.devmem).
        budget = min(budget, DEVICE_SHARE * available_bytes(device))
    return max(1, min(nsamples, MAX_AUTO_BATCH, int(budget // per_sequence)))


def check_batch_size(batch_size) -> None:
    """A positive int or "auto"; anything else is a one-line error (checked before a model is loaded)."""
    if batch_size == AUTO:
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size must be a positive integer or '{AUTO}', got {batch_size!r}")


def resolve_batch_size(batch_size, model: nn.Module, calib_ids: torch.Tensor) -> int:
    """A positive int as given; "auto" from the memory budget."""
    check_batch_size(batch_size)
    if batch_size == AUTO:
        return auto_batch_size(model, calib_ids.shape[0], calib_ids.shape[1])
    return batch_size
