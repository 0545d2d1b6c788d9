"""Matrix-multiply FLOPs of the engine's passes, counted from the decoder's shapes.

Per token and block: 2·in·out for every Linear, plus causal attention, 2·S·d (QKᵀ and AV over on average S/2
earlier positions, d = heads × head_dim). Element-wise work (norms, activations, rotary) is not counted, so
"share of peak" is the share of the machine's matmul rate spent on the products the pass must do.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn

from dlp.walk.prune import shared_input_groups
from dlp.walk.stats import HESSIAN, SQNORM, attach, gram_flops_per_token
from dlp.walk.structure import find_blocks, find_linears


@dataclass
class Shapes:
    blocks: int
    linear_macs: int  # Σ in·out over one block's Linears
    attention_width: int  # heads × head_dim
    gram_inputs: list  # in_features of each distinct Linear input of a block (q/k/v share one, gate/up one)
    matrices: list  # (rows, cols) of each group of Linears sharing an input, rows stacked
    head_macs: int  # output layer in·out
    hidden: int


@torch.no_grad()
def shapes(model: nn.Module) -> Shapes:
    """The decoder's shapes. Which Linears read the same tensor (one Gram matrix, one stacked SparseGPT matrix)
    is found as the engine finds it: hooks on the first block during a two-token forward pass."""
    cfg = model.config
    layout = find_blocks(model)
    linears = find_linears(layout.blocks[0])
    stats, handles = attach(linears, frozenset({SQNORM}))
    try:
        model(input_ids=torch.zeros(1, 2, dtype=torch.long, device=model.get_input_embeddings().weight.device),
              use_cache=False)
    finally:
        for h in handles:
            h.remove()
    groups = [[linears[name] for name in group] for group in shared_input_groups(linears, stats)]
    matrices = [(sum(layer.out_features for layer in g), g[0].in_features) for g in groups]
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    head = model.get_output_embeddings()
    return Shapes(blocks=len(layout), linear_macs=sum(m.in_features * m.out_features for m in linears.values()),
                  attention_width=heads * head_dim, gram_inputs=[c for _, c in matrices], matrices=matrices,
                  head_macs=head.in_features * head.out_features, hidden=cfg.hidden_size)


def forward_flops(s: Shapes, tokens: int, seqlen: int, with_head: bool = False) -> float:
    per_token = s.blocks * (2 * s.linear_macs + 2 * seqlen * s.attention_width)
    return tokens * (per_token + (2 * s.head_macs if with_head else 0))


def statistics_flops(s: Shapes, tokens: int, seqlen: int, needs: frozenset) -> float:
    # The Gram matrices' upper blocks, as dlp.walk.stats multiplies them (products actually done, not c² per token).
    extra = s.blocks * sum(gram_flops_per_token(c) for c in s.gram_inputs) * tokens if HESSIAN in needs else 0
    return forward_flops(s, tokens, seqlen) + extra

