"""The one engine: walk the decoder blocks in order over the calibration set.

For each block: accumulate statistics of every Linear input (forward hooks, float32), hand the block to a
visitor (a criterion prunes it, or an allocation scores it), then replay the block to produce the next
block's inputs. When the visitor changes the block the replay runs on the pruned block, as in the papers
(the next block is calibrated on the pruned prefix); when it does not, the statistics pass's outputs are the
next inputs and the second pass is skipped.

Work whose result nobody reads is not done: when the replay will produce a block's outputs (a prune walk), or
nobody reads them (the last block, unless asked), the statistics pass stops each batch as soon as every Linear
has taken its input (StopAfterLastInput): the last Linear's product and what follows it cannot change a
statistic. On a LLaMA block that is the down projection, a fifth of the block's products. The last block is
not replayed unless its outputs are asked for.

Transformers 5 calls decoder layers with keyword arguments (`position_embeddings`, masks, cache flags) and
they return a tensor. We capture what the model passes each block, per batch (`capture_inputs`), and replay
it unchanged; `dlp.walk.selfcheck` proves on one sequence that the walk reproduces the model's own forward.

A model whose blocks are offloaded (dlp.walk.offload: host memory or the checkpoint's files) has each block brought
to the device for its visit (statistics, visit, replay) and sent back after, the next one copied in ahead
where copies overlap compute; nothing else changes, so the masks are those of the model held whole.

Phases are timed with a clock that first waits for the device (`clock`): on a GPU, work is queued, and a wall
clock alone charges a phase's kernels to whichever later phase happens to wait for them.

A float32 model with a compute dtype (dlp.walk.compute_dtype) runs each block pass under autocast; the context is
opened per pass, never across a visit, because autocast keeps the lower-precision copies of the weights it
has cast until it exits (the replay must see the pruned weights).
"""
import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from dlp.walk.batching import AUTO, resolve_batch_size
from dlp.walk.compute_dtype import compute_dtype_of, computing
from dlp.walk.devmem import available_bytes
from dlp.walk.experts import has_routed_experts
from dlp.walk.offload import compute_device, offload_of
from dlp.walk.stats import LinearStats, attach
from dlp.walk.structure import BlockLayout, find_blocks, find_linears


class _Captured(Exception):
    """Raised by the last block's bypass: the capture pass has seen every block's arguments."""


class _InputsTaken(Exception):
    """Raised inside a statistics pass once every Linear of the block has taken this batch's input."""


class StopAfterLastInput:
    """Ends each batch of a block's pass at the pre-hook of its last Linear call, after the statistics hooks
    (registered before, so they run first) have taken that input.

    How many Linear calls a batch makes is learnt from the first batch, which runs whole: a Linear called twice,
    or one never called, is then counted right and the cut still comes after the last input a statistic needs.
    The cut is only safe when every batch makes the same calls: a block whose first batch left some Linear
    uncalled (a conditional branch) never cuts, and the engine does not use this on blocks with routed experts,
    where the calls follow the routing.
    """

    def __init__(self, linears: dict[str, nn.Linear]):
        self.calls, self.per_batch = 0, None
        self.called: set[int] = set()
        self.expected = {id(layer) for layer in linears.values()}
        self.skipped_flops = 0.0  # the products not done (the benchmark counts only work done)
        self.handles = [layer.register_forward_pre_hook(self._count) for layer in linears.values()]

    def _count(self, module, args):
        self.calls += 1
        if self.per_batch is None:
            self.called.add(id(module))
        elif self.calls == self.per_batch:
            if args:  # the products this cut saves, for the benchmark's count of work done
                rows = args[0].numel() // args[0].shape[-1]
                self.skipped_flops += 2.0 * module.in_features * module.out_features * rows
            raise _InputsTaken

    def batch_done(self, whole: bool) -> None:
        """After each batch: a batch that ran whole (the first) gives the count of calls to cut at (0: never
        cut, when that batch left a Linear uncalled)."""
        if whole and self.per_batch is None:
            self.per_batch = self.calls if self.called >= self.expected else 0
        self.calls = 0

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@dataclass
class BlockCall:
    """What the model passed one block besides its hidden states: the other positional arguments and the
    keyword arguments (masks, rotary tables, cache flags), as the model's own forward built them."""
    args: tuple
    kwargs: dict


@dataclass
class Captured:
    inputs: torch.Tensor  # (nsamples, seqlen, hidden): the first block's inputs in the model's dtype, on `store`
    calls: list[list[BlockCall]]  # calls[batch][block]: exactly what the model passed each block
    batch_size: int

    def block_calls(self, index: int) -> list[BlockCall]:
        """Block `index`'s arguments for every batch, in batch order."""
        return [per_block[index] for per_block in self.calls]


@dataclass
class WalkResult:
    timings: dict = field(default_factory=dict)
    blocks: int = 0
    batch_size: int = 0  # sequences per batch, as resolved ("auto": dlp.walk.batching)
    outputs: torch.Tensor | None = None  # the last block's outputs, when asked for (tests compare them)
    replayed_blocks: int = 0
    skipped_flops: float = 0.0  # Linear products the statistics passes cut short did not do
    uncalibrated: list = field(default_factory=list)  # matrices no calibration token reached (routed experts)


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


def clock(device: torch.device) -> float:
    """Seconds, after the device has finished the work queued on it (a phase's time includes its kernels)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _choose_store(model: nn.Module, calib_ids: torch.Tensor, hidden: int, dtype: torch.dtype) -> torch.device:
    """Keep activations on the GPU when two copies (in and out) fit in half of what the device has left (under
    the process's memory cap, when one is set: dlp.walk.devmem), else on the CPU."""
    device = compute_device(model)
    if device.type != "cuda":
        return device
    need = 2 * calib_ids.numel() * hidden * torch.tensor([], dtype=dtype).element_size()
    return device if need < 0.5 * available_bytes(device) else torch.device("cpu")


@torch.no_grad()
def capture_inputs(model: nn.Module, layout: BlockLayout, calib_ids: torch.Tensor, batch_size: int) -> Captured:
    """The first block's inputs and what the model passes every block, found by running the model with every
    block bypassed (it returns its input unchanged while its arguments are recorded); each batch stops at the
    last block, before the final norm and the output layer.

    Every block, not only the first: a model may pass each block different arguments (Gemma-2/3 and Qwen2/3
    pick the attention mask, and Gemma-3 the rotary tables, by the block's layer type), and replaying block 0's
    to all of them calibrates on activations the model never computes. Arguments that the model passes to
    several blocks are the same objects, so they are held once: memory grows only by what really differs
    (one mask or rotary set per distinct layer type).
    """
    dtype = model.get_input_embeddings().weight.dtype
    last = len(layout) - 1
    state: dict = {}

    def bypass_for(index: int):
        def bypass(*args, **kwargs):
            hidden = args[0] if args else kwargs.pop("hidden_states")
            state["calls"].append(BlockCall(tuple(args[1:]), kwargs))
            if index == 0:
                state["h"] = hidden
            if index == last:
                raise _Captured
            return hidden
        return bypass

    embed_device = model.get_input_embeddings().weight.device
    inputs, calls = None, []
    with forwards_replaced(layout, bypass_for):
        for start in range(0, calib_ids.shape[0], batch_size):
            batch = calib_ids[start:start + batch_size].to(embed_device)
            state["calls"] = []
            try:
                model(input_ids=batch, use_cache=False)
            except _Captured:
                pass
            if len(state["calls"]) != len(layout):
                raise RuntimeError(f"{type(model).__name__} called {len(state['calls'])} of its {len(layout)} "
                                   "decoder blocks in one forward pass")
            if inputs is None:
                store = _choose_store(model, calib_ids, state["h"].shape[-1], dtype)
                inputs = torch.empty(*calib_ids.shape, state["h"].shape[-1], dtype=dtype, device=store)
            inputs[start:start + batch.shape[0]] = state["h"].to(inputs.device)
            calls.append(state["calls"])
    return Captured(inputs, calls, batch_size)


@contextlib.contextmanager
def forwards_replaced(layout: BlockLayout, forward_for: Callable[[int], Callable]):
    """Every block's forward replaced by `forward_for(index)` inside the block (the model's code around the
    blocks runs as usual). An instance-level forward (accelerate's device hooks put one there) is put back as
    it was."""
    saved = [block.__dict__.get("forward") for block in layout.blocks]
    for index, block in enumerate(layout.blocks):
        block.forward = forward_for(index)
    try:
        yield
    finally:
        for block, forward in zip(layout.blocks, saved):
            del block.forward
            if forward is not None:
                block.forward = forward


def run_block(block: nn.Module, inputs: torch.Tensor, calls: list[BlockCall], batch_size: int,
              out: torch.Tensor | None, compute_dtype: torch.dtype | None = None,
              stop: StopAfterLastInput | None = None) -> bool:
    """Forward every batch through one block (under autocast to `compute_dtype` when given); write the outputs
    into `out` when given. With `stop`, batches may end at their last Linear input: returns False if any did
    (then `out` is incomplete)."""
    device = _device_of(block)
    whole = True
    with computing(compute_dtype, device):  # one context per pass: the block's weights cast once
        for b, start in enumerate(range(0, inputs.shape[0], batch_size)):
            x = inputs[start:start + batch_size].to(device)
            try:
                y = block(x, *_move(calls[b].args, device), **_move(calls[b].kwargs, device))
            except _InputsTaken:
                y = None
            if stop is not None:
                stop.batch_done(whole=y is not None)
            if y is None:
                whole = False
                continue
            y = y[0] if isinstance(y, tuple) else y  # transformers < 5 returned a tuple
            if out is not None:
                out[start:start + batch_size] = y.to(out.device)
    return whole


# A visitor gets (block index, block, its Linears, their statistics) and returns True if it changed the block.
Visitor = Callable[[int, nn.Module, dict[str, nn.Linear], dict[str, LinearStats]], bool]


_WATCHERS: list[list] = []  # lists that `watch_walks` opened, each collecting the walks finished inside it


@contextlib.contextmanager
def watch_walks():
    """Every walk that finishes inside the block, as its `WalkResult` (timings, replays, skipped products), in
    order: how a caller that does not call `walk` itself (the bench timing an allocation) sees the work done."""
    walks: list[WalkResult] = []
    _WATCHERS.append(walks)
    try:
        yield walks
    finally:
        _WATCHERS.remove(walks)


@torch.no_grad()
def walk(model: nn.Module, calib_ids: torch.Tensor, visit: Visitor, needs: frozenset, batch_size: int | str = AUTO,
         desc: str = "blocks", progress: bool = True, keep_outputs: bool = False,
         share_stats: bool = True, replays: bool = False, stop_early: bool = True) -> WalkResult:
    """Walk every block once: statistics pass, visit, replay (when the visitor changed the block, or the
    statistics pass stopped early and its outputs are needed).

    `replays=True` says the visitor changes (nearly) every block, so the statistics pass's outputs would be
    thrown away: it stops each batch at the last Linear input. `stop_early=False` runs every pass whole.
    `batch_size=1, share_stats=False, stop_early=False` is the reference code's way (one sequence at a time,
    statistics per Linear, whole passes); the defaults give the same statistics with fewer, larger products and
    no product whose result is thrown away. `batch_size="auto"` picks the batch from a memory budget
    (dlp.walk.batching).
    """
    result = WalkResult()
    layout = find_blocks(model)
    home = offload_of(model)
    batch_size = result.batch_size = resolve_batch_size(batch_size, model, calib_ids)
    t0 = clock(home.device)
    cap = capture_inputs(model, layout, calib_ids, batch_size)
    result.timings["capture"] = clock(home.device) - t0
    inputs, outputs = cap.inputs, torch.empty_like(cap.inputs)
    compute = compute_dtype_of(model)
    times = {"statistics": 0.0, "visit": 0.0, "replay": 0.0}
    # Each block on the device for its passes (dlp.walk.offload); a visit that changed it sends its changes back.
    for index, block, visiting in tqdm(home.visits(layout.blocks), total=len(layout), desc=desc,
                                       disable=not progress):
        linears = find_linears(block)
        wanted = keep_outputs or index < len(layout) - 1  # does anything read this block's outputs?
        stats, handles = attach(linears, needs, share=share_stats, seqlen=inputs.shape[1])
        # Only a pass that takes statistics may stop early (a pass with no hooks is the dense yardstick).
        cut = stop_early and needs and (replays or not wanted) and not has_routed_experts(block)
        stop = StopAfterLastInput(linears) if cut else None
        t = clock(home.device)
        try:
            whole = run_block(block, inputs, cap.block_calls(index), batch_size, out=outputs if wanted else None,
                              compute_dtype=compute, stop=stop)
        finally:
            for h in handles:
                h.remove()
            if stop is not None:
                stop.remove()
                result.skipped_flops += stop.skipped_flops
        for st in stats.values():
            st.nsamples = inputs.shape[0]
        times["statistics"] += clock(home.device) - t
        t = clock(home.device)
        visiting.changed = visit(index, block, linears, stats)
        times["visit"] += clock(home.device) - t
        del stats
        if wanted and (visiting.changed or not whole):
            t = clock(home.device)
            run_block(block, inputs, cap.block_calls(index), batch_size, out=outputs, compute_dtype=compute)
            times["replay"] += clock(home.device) - t
            result.replayed_blocks += 1
        inputs, outputs = outputs, inputs  # this block's outputs are the next block's inputs
    result.timings.update(times)
    result.blocks = len(layout)
    if keep_outputs:
        result.outputs = inputs
    for walks in _WATCHERS:
        walks.append(result)
    return result
