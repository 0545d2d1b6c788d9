"""The one engine: walk the decoder blocks in order over the calibration set.

For each block: accumulate statistics of every Linear input (forward hooks, float32), hand the block to a
visitor (a criterion prunes it, or an allocation scores it), then replay the block to produce the next
block's inputs. When the visitor changes the block the replay runs on the pruned block, as in the papers
(the next block is calibrated on the pruned prefix); when it does not, the statistics pass's outputs are the
next inputs and the second pass is skipped.

Transformers 5 calls decoder layers with keyword arguments (`position_embeddings`, masks, cache flags) and
they return a tensor. We capture those kwargs at the first block, per batch, and replay them unchanged.

A float32 model with a compute dtype (dlp.compute_dtype) runs each block pass under autocast; the context is
opened per pass, never across a visit, because autocast keeps the lower-precision copies of the weights it
has cast until it exits (the replay must see the pruned weights).
"""
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .batching import AUTO, resolve_batch_size
from .compute_dtype import compute_dtype_of, computing
from .stats import LinearStats, attach
from .structure import BlockLayout, find_blocks, find_linears


class _Captured(Exception):
    pass


@dataclass
class Captured:
    inputs: torch.Tensor  # (nsamples, seqlen, hidden) in the model's dtype, on `store`
    kwargs: list[dict]  # one dict per batch, exactly as the model passed them to block 0
    batch_size: int


@dataclass
class WalkResult:
    timings: dict = field(default_factory=dict)
    blocks: int = 0
    batch_size: int = 0  # sequences per batch, as resolved ("auto": dlp.batching)
    outputs: torch.Tensor | None = None  # the last block's outputs, when asked for (tests compare them)


def _move(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_move(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _move(v, device) for k, v in obj.items()}
    return obj


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _choose_store(model: nn.Module, calib_ids: torch.Tensor, hidden: int, dtype: torch.dtype) -> torch.device:
    """Keep activations on the GPU when two copies (in and out) fit with room to spare, else on the CPU."""
    device = _device_of(model)
    if device.type != "cuda":
        return device
    need = 2 * calib_ids.numel() * hidden * torch.tensor([], dtype=dtype).element_size()
    free, _total = torch.cuda.mem_get_info(device)
    return device if need < 0.5 * free else torch.device("cpu")


@torch.no_grad()
def capture_inputs(model: nn.Module, layout: BlockLayout, calib_ids: torch.Tensor, batch_size: int) -> Captured:
    first = layout.blocks[0]
    dtype = next(first.parameters()).dtype
    hidden = model.config.hidden_size
    store = _choose_store(model, calib_ids, hidden, dtype)
    inputs = torch.empty(calib_ids.shape[0], calib_ids.shape[1], hidden, dtype=dtype, device=store)
    kwargs_per_batch: list[dict] = []
    state = {}

    def grab(_module, args, kwargs):
        hidden_states = args[0] if args else kwargs.pop("hidden_states")
        state["h"], state["kw"] = hidden_states, dict(kwargs)
        raise _Captured

    handle = first.register_forward_pre_hook(grab, with_kwargs=True)
    embed_device = model.get_input_embeddings().weight.device
    try:
        for start in range(0, calib_ids.shape[0], batch_size):
            batch = calib_ids[start:start + batch_size].to(embed_device)
            try:
                model(input_ids=batch, use_cache=False)
            except _Captured:
                pass
            inputs[start:start + batch.shape[0]] = state["h"].to(store)
            kwargs_per_batch.append({k: v for k, v in state["kw"].items()})
    finally:
        handle.remove()
    return Captured(inputs, kwargs_per_batch, batch_size)


def run_block(block: nn.Module, inputs: torch.Tensor, kwargs_per_batch: list[dict], batch_size: int,
              out: torch.Tensor | None, compute_dtype: torch.dtype | None = None) -> None:
    """Forward every batch through one block (under autocast to `compute_dtype` when given); write the outputs
    into `out` when given."""
    device = _device_of(block)
    with computing(compute_dtype, device):  # one context per pass: the block's weights cast once
        for b, start in enumerate(range(0, inputs.shape[0], batch_size)):
            x = inputs[start:start + batch_size].to(device)
            y = block(x, **_move(kwargs_per_batch[b], device))
            y = y[0] if isinstance(y, tuple) else y  # transformers < 5 returned a tuple
            if out is not None:
                out[start:start + batch_size] = y.to(out.device)


# A visitor gets (block index, block, its Linears, their statistics) and returns True if it changed the block.
Visitor = Callable[[int, nn.Module, dict[str, nn.Linear], dict[str, LinearStats]], bool]


@torch.no_grad()
def walk(model: nn.Module, calib_ids: torch.Tensor, visit: Visitor, needs: frozenset, batch_size: int | str = AUTO,
         desc: str = "blocks", progress: bool = True, keep_outputs: bool = False,
         share_stats: bool = True) -> WalkResult:
    """Walk every block once: statistics pass, visit, replay (skipped when the visitor changed nothing).

    `batch_size=1, share_stats=False` is the reference code's way (one sequence at a time, statistics per
    Linear); the defaults give the same statistics with fewer, larger products. `batch_size="auto"` picks the
    batch from a memory budget (dlp.batching).
    """
    result = WalkResult()
    layout = find_blocks(model)
    batch_size = result.batch_size = resolve_batch_size(batch_size, model, calib_ids)
    t0 = time.perf_counter()
    cap = capture_inputs(model, layout, calib_ids, batch_size)
    result.timings["capture"] = time.perf_counter() - t0
    inputs, outputs = cap.inputs, torch.empty_like(cap.inputs)
    compute = compute_dtype_of(model)
    times = {"statistics": 0.0, "visit": 0.0, "replay": 0.0}
    for index, block in enumerate(tqdm(layout.blocks, desc=desc, disable=not progress)):
        linears = find_linears(block)
        stats, handles = attach(linears, needs, share=share_stats, seqlen=inputs.shape[1])
        t = time.perf_counter()
        try:
            run_block(block, inputs, cap.kwargs, batch_size, out=outputs, compute_dtype=compute)
        finally:
            for h in handles:
                h.remove()
        for st in stats.values():
            st.nsamples = inputs.shape[0]
        times["statistics"] += time.perf_counter() - t
        t = time.perf_counter()
        changed = visit(index, block, linears, stats)
        times["visit"] += time.perf_counter() - t
        del stats
        if changed:
            t = time.perf_counter()
            run_block(block, inputs, cap.kwargs, batch_size, out=outputs, compute_dtype=compute)
            times["replay"] += time.perf_counter() - t
        inputs, outputs = outputs, inputs  # this block's outputs are the next block's inputs
    result.timings.update(times)
    result.blocks = len(layout)
    if keep_outputs:
        result.outputs = inputs
    return result
