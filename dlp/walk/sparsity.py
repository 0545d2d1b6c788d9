"""Actual sparsity measured on the model: share of exactly-zero weights in the blocks' Linear layers."""
from dlp.walk.offload import resident_blocks
from dlp.walk.structure import find_blocks, find_linears


def measure_sparsity(model) -> dict:
    per_matrix, per_block = {}, []
    zeros_total = numel_total = 0
    layout = find_blocks(model)
    for index, block in resident_blocks(model):
        zeros = numel = 0
        for name, layer in find_linears(block).items():
            z, n = int((layer.weight == 0).sum()), layer.weight.numel()
            per_matrix[f"{layout.path}.{index}.{name}"] = z / n
            zeros, numel = zeros + z, numel + n
        per_block.append(zeros / numel)
        zeros_total, numel_total = zeros_total + zeros, numel_total + numel
    return {"overall": zeros_total / numel_total, "per_block": per_block, "per_matrix": per_matrix,
            "pruned_parameters": numel_total}
