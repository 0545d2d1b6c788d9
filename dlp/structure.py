"""Find the decoder blocks and their Linear layers from the module tree, never from the model's name.

The decoder stack is the ModuleList (or Sequential) whose children all share one class and contain Linear
layers; when several qualify (encoder-decoder, vision towers), the one holding the most parameters wins.
Embeddings and the LM head live outside it and are therefore never pruned.
"""
from dataclasses import dataclass

import torch.nn as nn

from .errors import UserError


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
        raise UserError(f"no decoder blocks found in {type(model).__name__}: "
                        "expected a list of identical blocks containing Linear layers")
    _, path, module = max(candidates, key=lambda c: c[0])
    return BlockLayout(path, module)


def find_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """Every Linear inside one block, by its path relative to the block (e.g. 'self_attn.q_proj')."""
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}
