"""Find the decoder blocks and their prunable matrices from the module tree, never from the model's name.

The decoder stack is the ModuleList (or Sequential) whose children all share one class and contain Linear
layers; when several qualify (encoder-decoder, vision towers), the one holding the most parameters wins.
Embeddings and the LM head live outside it and are therefore never pruned.
"""
from dataclasses import dataclass

import torch.nn as nn

from dlp.errors import UserError
from dlp.walk.experts import routed_linears


@dataclass
class BlockLayout:
    path: str  # dotted module path of the block list, e.g. "model.layers" or "model.decoder.layers"
    blocks: nn.ModuleList

    def __len__(self) -> int:
        return len(self.blocks)


def _has_linear(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Linear) for m in module.modules())


def find_blocks(model: nn.Module) -> BlockLayout:
    candidates = []
    for path, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)) or len(module) == 0:
            continue
        kinds = {type(child) for child in module}
        if len(kinds) != 1 or not all(_has_linear(child) for child in module):
            continue
        size = sum(p.numel() for p in module.parameters())
        candidates.append((size, path, module))
    if not candidates:
        others = _other_weight_modules(model)
        if others:  # GPT-2's Conv1D: refused in one line rather than pruned partially or wrongly
            raise UserError(f"{type(model).__name__} is not supported: its decoder blocks keep their weights in "
                            f"{', '.join(others)} modules, not nn.Linear (only nn.Linear layers and fused expert "
                            "tensors are pruned)")
        raise UserError(f"no decoder blocks found in {type(model).__name__}: "
                        "expected a list of identical blocks containing Linear layers")
    _, path, module = max(candidates, key=lambda c: c[0])
    return BlockLayout(path, module)


def _other_weight_modules(model: nn.Module) -> list[str]:
    """Class names of the modules holding matrices in a list of identical blocks that has no Linear."""
    names = set()
    for module in model.modules():
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) and len({type(c) for c in module}) == 1:
            for sub in module[0].modules():
                if not isinstance(sub, nn.Embedding) and any(p.dim() >= 2 for p in sub.parameters(recurse=False)):
                    names.add(type(sub).__name__)
    return sorted(names)


def find_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """Every prunable matrix of one block, by its path relative to the block (e.g. 'self_attn.q_proj'): its
    nn.Linear layers, then one Linear per routed expert and fused tensor ('mlp.experts.down_proj.5', a view of
    the fused parameter: dlp.walk.experts; the first call on a block installs the experts' routing forward).
    Routers, the Linears that score experts, are left out: pruning them changes which experts run."""
    routers = set(router_linears(block))
    found = {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear) and name not in routers}
    found.update(routed_linears(block))
    return found


def router_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """Linears beside a module's `experts` with at most one output per expert: the router (Mixtral's `gate` in
    older layouts) and gates such as Qwen2-MoE's `shared_expert_gate` (one output). Transformers 5 routers are
    not Linears (a bare weight in a TopKRouter) and never reach the prunable set."""
    found = {}
    for path, module in block.named_modules():
        experts = getattr(module, "experts", None)
        if not isinstance(experts, nn.Module):
            continue
        count = getattr(experts, "num_experts", None) or (len(experts) if isinstance(experts, nn.ModuleList) else 0)
        for name, child in module.named_children():
            if isinstance(child, nn.Linear) and child.out_features <= count:
                found[f"{path}.{name}" if path else name] = child
    return found
