"""The self-check every run makes before its walks: the engine's block walk must reproduce the model's own
forward pass, block by block, on one calibration sequence.

The engine replays to each block the arguments the model passed it (dlp.walk.engine.capture_inputs). A family that
builds a block's arguments in a way the capture misses (state carried between blocks, arguments that depend on
the previous block's output) would be calibrated on activations the model never computes, and its numbers
would be silently wrong. This check turns that into one clear line naming the block, the difference and the
model class, before any minute is spent. It costs one sequence through the model and once more through the
walk: for 128 calibration sequences about 1.5% of one dense pass.
"""
import time

import torch

from dlp.errors import CheckFailed
from dlp.walk.compute_dtype import compute_dtype_of, computing, working_tolerance
from dlp.walk.engine import capture_inputs, run_block
from dlp.walk.offload import offload_of, streaming
from dlp.walk.structure import find_blocks

# Largest |engine − model| over a block's output, as a share of the output's largest |value|. The two paths
# run the same operations, so they agree to the bit on every family tested; the bound only leaves room for
# kernels that pick another summation order for another batch shape (routed experts), at the working
# precision. A wrong mask or rotary table moves the outputs by a large share of their largest value.
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8}
REDUCED_TOLERANCE = 2e-2  # bfloat16 / float16 weights, or a bfloat16 compute dtype


class _Done(Exception):
    pass


def tolerance_for(model) -> float:
    return working_tolerance(model, TOLERANCE, REDUCED_TOLERANCE)


@torch.no_grad()
def model_block_outputs(model, ids: torch.Tensor) -> list[torch.Tensor]:
    """Every decoder block's output in the model's own forward pass (stopped after the last block)."""
    blocks = find_blocks(model).blocks
    outputs = []

    def keep(index):
        def hook(_module, _args, out):
            outputs.append(out[0] if isinstance(out, tuple) else out)
            if index == len(blocks) - 1:
                raise _Done
        return hook

    handles = [block.register_forward_hook(keep(i)) for i, block in enumerate(blocks)]
    try:
        with streaming(model), computing(compute_dtype_of(model), model.get_input_embeddings().weight.device):
            model(input_ids=ids.to(model.get_input_embeddings().weight.device), use_cache=False)
    except _Done:
        pass
    finally:
        for h in handles:
            h.remove()
    return outputs


@torch.no_grad()
def walk_block_outputs(model, ids: torch.Tensor) -> list[torch.Tensor]:
    """Every block's output as the engine's walk computes it: captured inputs and arguments, block by block."""
    layout = find_blocks(model)
    cap = capture_inputs(model, layout, ids, batch_size=ids.shape[0])
    compute = compute_dtype_of(model)
    x, outputs = cap.inputs, []
    for index, block, _visit in offload_of(model).visits(layout.blocks):
        y = torch.empty_like(x)
        run_block(block, x, cap.block_calls(index), ids.shape[0], out=y, compute_dtype=compute)
        outputs.append(y)
        x = y
    return outputs


def check_walk(model, ids: torch.Tensor) -> dict:
    """Compare the walk with the model's own forward on `ids` (one sequence is enough); raise CheckFailed
    naming the first block that differs by more than the tolerance. Returns what the record keeps."""
    t = time.perf_counter()
    reference = model_block_outputs(model, ids)
    walked = walk_block_outputs(model, ids)
    tolerance = tolerance_for(model)
    differences = []
    for index, (a, b) in enumerate(zip(walked, reference)):
        a, b = a.float(), b.to(a.device).float()
        scale = b.abs().max().item() or 1.0
        diff = (a - b).abs().max().item() / scale
        differences.append(diff)
        if not diff <= tolerance:  # NaN fails too
            raise CheckFailed(f"self-check failed: block {index} of {type(model).__name__} differs from the model's "
                            f"own forward by {diff:.3g} of its largest value (tolerance {tolerance:g}): the engine "
                            "would calibrate on activations the model never computes")
    return {"passed": True, "sequences": int(ids.shape[0]), "tokens": int(ids.numel()), "tolerance": tolerance,
            "max_difference": max(differences), "seconds": time.perf_counter() - t}
