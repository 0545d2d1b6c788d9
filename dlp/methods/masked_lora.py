"""LoRA on a pruned model that keeps every pruned weight exactly zero.

A plain LoRA merge adds B·A, a dense update, to each matrix and fills its zeros back in. Here the update is
taken through the matrix's mask, W' = W + (s·B·A) ⊙ M with M = (W ≠ 0), both when merging and, with
`mask_training`, in the forward pass while training: the merged model is then the function that was trained
(to the bit), at the price of materialising each matrix's update in every forward (one more copy of the
adapted weights in memory). Without it the adapters train as plain PEFT LoRA and the merge still masks: the
merged model is sparse but not the trained function (the run records both perplexities).
"""
import types

import torch
import torch.nn.functional as F

from dlp.storage.checkpoint import pruned_weights


def pruned_linear_names(model) -> list[str]:
    """Full module paths of the decoder blocks' Linear layers (the matrices pruning changed). Fused expert
    tensors have no Linear module for LoRA to wrap and are left as they are."""
    return [key.removesuffix(".weight") for key in pruned_weights(model) if key.endswith(".weight")]


def lora_layers(peft_model) -> dict:
    """PEFT's LoRA wrappers by the path of the Linear they wrap (relative to the base model)."""
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    return {name: module for name, module in base.named_modules() if isinstance(module, LoraLayer)}


def delta(layer) -> torch.Tensor:
    """s·B·A of the active adapter, in the base weight's dtype."""
    (adapter,) = layer.active_adapters
    update = layer.lora_B[adapter].weight @ layer.lora_A[adapter].weight * layer.scaling[adapter]
    return update.to(layer.base_layer.weight.dtype)


def mask_training(peft_model) -> int:
    """Make every LoRA layer compute x·(W + (s·B·A) ⊙ M)ᵀ, M = (W ≠ 0): the update never reaches a pruned
    weight. Dropout on the adapter's input has no place in this form: it must be 0. Returns the layer count."""
    layers = lora_layers(peft_model)
    for layer in layers.values():
        (adapter,) = layer.active_adapters
        dropout = layer.lora_dropout[adapter]
        if isinstance(dropout, torch.nn.Dropout) and dropout.p > 0:
            raise ValueError("masked LoRA training needs lora_dropout = 0")
        layer.register_buffer("dlp_keep", layer.base_layer.weight != 0, persistent=False)

        def forward(self, x, *args, **kwargs):
            weight = self.base_layer.weight + delta(self).masked_fill(~self.dlp_keep, 0.0)
            return F.linear(x, weight, self.base_layer.bias)

        layer.forward = types.MethodType(forward, layer)
    return len(layers)


def merge_through_mask(peft_model):
    """The base model with each adapter merged as W + (s·B·A) ⊙ (W ≠ 0) and the LoRA layers removed. Raises
    if any weight that was zero before is not exactly zero after."""
    layers = lora_layers(peft_model)
    with torch.no_grad():
        for name, layer in layers.items():
            weight = layer.base_layer.weight
            keep = weight != 0
            weight.copy_(torch.where(keep, weight + delta(layer), weight))
            if bool((weight[~keep] != 0).any()):
                raise AssertionError(f"{name}: a pruned weight is no longer zero after the merge")
    return peft_model.unload()


def zero_counts(model, names: list[str]) -> dict[str, int]:
    modules = dict(model.named_modules())
    return {name: int((modules[name].weight == 0).sum()) for name in names}
