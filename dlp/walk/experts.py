"""Routed experts stored as fused 3-D tensors, seen by the engine as one Linear per expert and matrix.

Transformers 5 keeps a mixture-of-experts layer's experts in 3-D parameters (`gate_up_proj` of shape
(experts, 2·inner, hidden) and `down_proj` of shape (experts, hidden, inner) for Mixtral and Qwen2/3-MoE), and
its forward calls `F.linear` on slices of them, so no Linear module exists for a hook to see. `expose`
gives each expert's slice a Linear whose weight is a *view* of the fused tensor (pruning it writes straight
into the model's own parameter; the checkpoint layout is unchanged) and swaps the experts' forward for
transformers' eager routing loop calling those Linears: the same `F.linear` calls on the same slices. Its
default kernel (`grouped_mm`) gives the same bits in float32 (tested) but may round otherwise in bfloat16, so
`dlp.storage.models.load_model` exposes every model's experts at once: dense and pruned runs evaluate alike.

Each expert's Linear sees only the tokens routed to it. One that no calibration token reached has no input
statistics: `dlp.walk.prune` prunes it by weight magnitude at the block's sparsity and reports it (an input-aware
criterion has nothing to rank by, and SparseGPT would zero every weight of an input it never saw).
"""
import types

import torch
import torch.nn as nn

from dlp.errors import UserError

FUSED_NAMES = ("gate_up_proj", "up_proj", "down_proj")
_VIEWS = "_dlp_expert_linears"  # a plain attribute, not a submodule: the state dict stays the model's own


def is_fused_experts(module: nn.Module) -> bool:
    """A module holding routed experts as 3-D parameters (transformers' `use_experts_implementation`)."""
    return isinstance(getattr(module, "num_experts", None), int) and any(
        isinstance(getattr(module, name, None), nn.Parameter) and getattr(module, name).dim() == 3
        for name in FUSED_NAMES)


def _view_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A Linear on the meta device (nothing allocated) given a view of the fused tensor as its weight."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    layer.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias, requires_grad=False)
    return layer


def _check_supported(module: nn.Module) -> None:
    name = type(module).__name__
    if getattr(module, "has_post_expert_norm", False):
        raise UserError(f"{name}: experts with a norm after each expert are not supported")
    if not hasattr(module, "down_proj") or not (hasattr(module, "gate_up_proj") or hasattr(module, "up_proj")):
        raise UserError(f"{name}: fused experts without gate_up_proj/up_proj and down_proj are not supported")


def _slices(module: nn.Module):
    """(name, weight view, bias view or None) of every expert's slice of every fused tensor, as nn.Linear
    holds a weight: (out, in)."""
    transposed = getattr(module, "is_transposed", False)
    for tensor_name in FUSED_NAMES:
        fused = getattr(module, tensor_name, None)
        if fused is None:
            continue
        bias = getattr(module, f"{tensor_name}_bias", None)
        for e in range(module.num_experts):
            yield (f"{tensor_name}.{e}", fused.data[e].t() if transposed else fused.data[e],
                   None if bias is None else bias.data[e])


def expose(module: nn.Module) -> dict[str, nn.Linear]:
    """Per-expert Linears of a fused experts module, named '<tensor>.<expert>' (e.g. 'gate_up_proj.3'),
    installing the routing forward that calls them on first use (idempotent)."""
    views = module.__dict__.get(_VIEWS)
    if views is not None:
        _follow(module, views)
        return views
    _check_supported(module)
    views = {name: _view_linear(w, b) for name, w, b in _slices(module)}
    object.__setattr__(module, _VIEWS, views)
    module.forward = types.MethodType(_routed_forward, module)
    return views


def _follow(module: nn.Module, views: dict[str, nn.Linear]) -> None:
    """Point the views at the fused tensors again if these moved (`model.to(...)`, a dtype change): the same
    Linear objects, so hooks registered on them still fire."""
    first = next(iter(views.values()))
    name, w, _ = next(_slices(module))
    if first.weight.data_ptr() == w.data_ptr() and first.weight.dtype == w.dtype and first.weight.device == w.device:
        return
    for name, w, b in _slices(module):
        views[name].weight = nn.Parameter(w, requires_grad=False)
        if b is not None:
            views[name].bias = nn.Parameter(b, requires_grad=False)


def _routed_forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                    top_k_weights: torch.Tensor) -> torch.Tensor:
    """transformers' eager experts loop, each product through the expert's Linear (so hooks see its input)."""
    views = self.__dict__[_VIEWS]
    _follow(self, views)
    final = torch.zeros_like(hidden_states)
    with torch.no_grad():
        expert_mask = nn.functional.one_hot(top_k_index, num_classes=self.num_experts + 1).permute(2, 1, 0)
        hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
    for e in hit[:, 0].tolist():
        if e == self.num_experts:  # the slot for tokens routed nowhere
            continue
        top_k_pos, token_idx = torch.where(expert_mask[e])
        x = hidden_states[token_idx]
        if "gate_up_proj.0" in views:
            h = views[f"gate_up_proj.{e}"](x)
            h = self._apply_gate(h) if getattr(self, "has_gate", True) else self.act_fn(h)
        else:
            h = self.act_fn(views[f"up_proj.{e}"](x))
        h = views[f"down_proj.{e}"](h) * top_k_weights[token_idx, top_k_pos, None]
        final.index_add_(0, token_idx, h.to(final.dtype))
    return final


def routed_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """Every fused experts module's per-expert Linears in one block, by path ('mlp.experts.down_proj.5')."""
    found = {}
    for path, module in block.named_modules():
        if is_fused_experts(module):
            found.update({f"{path}.{name}": layer for name, layer in expose(module).items()})
    return found


def expose_experts(model: nn.Module) -> int:
    """Expose every fused experts module of a model (see above); returns how many there were."""
    found = [m for m in model.modules() if is_fused_experts(m)]
    for module in found:
        expose(module)
    return len(found)


def has_routed_experts(block: nn.Module) -> bool:
    """Whether some Linears of this block run only for the tokens routed to them (so the number of Linear
    calls a batch makes changes from batch to batch)."""
    return any(is_fused_experts(m) or (isinstance(m, nn.ModuleList) and name.rsplit(".", 1)[-1] == "experts")
               for name, m in block.named_modules())
