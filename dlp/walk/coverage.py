"""What a prune covers, measured on the model: per block, which parameters are pruned and which are not (and
why), and the sparsity both over the pruned matrices and over every decoder parameter.

A family whose weights sit outside nn.Linear (routers, norms, biases, fused tensors of an unknown layout,
convolutions) would otherwise be pruned partially in silence: the reported sparsity would be that of a
subset. A run whose pruned set holds less than MIN_SHARE of the decoder's parameters says so.
"""
import logging

import torch.nn as nn

from dlp.walk.experts import FUSED_NAMES, is_fused_experts
from dlp.walk.offload import resident_blocks
from dlp.walk.structure import find_blocks, find_linears, router_linears

MIN_SHARE = 0.9
log = logging.getLogger(__name__)


def _kind(name: str, owner: nn.Module, routers: set[str], param) -> str:
    """Why a parameter is not pruned, in a word or two."""
    owner_path = name.rsplit(".", 1)[0] if "." in name else ""
    if owner_path in routers or "router" in type(owner).__name__.lower():
        return "router"
    if name.endswith("bias"):
        return "bias"
    if "norm" in type(owner).__name__.lower():
        return "norm"
    if param.dim() == 1:
        return "vector"
    return f"{type(owner).__name__} ({param.dim()}-D, not nn.Linear)"


def block_coverage(block: nn.Module) -> dict:
    """{"pruned": [parameter names], "not_pruned": {name: why}, and their sizes} for one block. A fused expert
    tensor counts as pruned when its per-expert views are (dlp.walk.experts)."""
    prunable = {id(layer.weight) for layer in find_linears(block).values()}
    prunable |= {id(getattr(m, t)) for m in block.modules() if is_fused_experts(m)  # pruned through their views
                 for t in FUSED_NAMES if getattr(m, t, None) is not None}
    routers = set(router_linears(block))
    modules = dict(block.named_modules())
    pruned, not_pruned, pruned_n, total_n = [], {}, 0, 0
    for name, param in block.named_parameters():
        total_n += param.numel()
        if id(param) in prunable:
            pruned.append(name)
            pruned_n += param.numel()
        else:
            owner = modules[name.rsplit(".", 1)[0]] if "." in name else block
            not_pruned[name] = _kind(name, owner, routers, param)
    return {"pruned": pruned, "not_pruned": not_pruned, "pruned_parameters": pruned_n, "parameters": total_n}


def coverage(model) -> dict:
    """Per-block coverage, the pruned share of all decoder parameters, and a warning when it is below
    MIN_SHARE (logged once, and kept in the returned record)."""
    blocks = [block_coverage(b) for b in find_blocks(model).blocks]
    pruned = sum(b["pruned_parameters"] for b in blocks)
    total = sum(b["parameters"] for b in blocks)
    out = {"pruned_parameters": pruned, "decoder_parameters": total, "pruned_share": pruned / total,
           "per_block": [{"pruned": b["pruned"], "not_pruned": b["not_pruned"]} for b in blocks]}
    if pruned / total < MIN_SHARE:
        kinds = sorted({k for b in blocks for k in b["not_pruned"].values()})
        out["warning"] = (f"the pruned matrices of {type(model).__name__} hold {pruned / total:.1%} of its decoder "
                          f"parameters (under {MIN_SHARE:.0%}); not pruned: {', '.join(kinds)}")
        log.warning(out["warning"])
    return out


def decoder_sparsity(model) -> float:
    """Share of exactly-zero values among all decoder parameters (pruned or not)."""
    zeros = total = 0
    for _index, block in resident_blocks(model):
        for param in block.parameters():
            zeros, total = zeros + int((param == 0).sum()), total + param.numel()
    return zeros / total
