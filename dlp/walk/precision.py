"""Float32 products of bfloat16 values at bfloat16 speed, with nothing lost.

SparseGPT's Gram matrix Σ x xᵀ is accumulated in float32, as the reference code does. When the activations x
come from a bfloat16 model, every entry of x has an 8-bit significand: a product of two of them is exact in
float32, and so is feeding them to a matrix unit that rounds float32 inputs to bfloat16 (oneDNN's "bf16"
float32 mode on the CPU) or to TF32 (10 bits, on NVIDIA GPUs) and accumulates in float32. The result is the
same float32 sum of the same exact products, in another order, and a CPU with bfloat16 matrix instructions
runs it markedly faster. For float32 or float16 activations the rounding would lose bits, so the
mode is only switched on for bfloat16 inputs and restored on exit.
"""
import contextlib

import torch


@contextlib.contextmanager
def exact_reduced_precision_products(source_dtype: torch.dtype, device: torch.device):
    """Within the block, float32 matmuls on `device` may round their inputs to bfloat16 (CPU) or TF32 (CUDA),
    which is exact when the float32 operands were converted from `source_dtype` == bfloat16."""
    if source_dtype != torch.bfloat16:
        yield
        return
    if device.type == "cpu":
        backend, mode = torch.backends.mkldnn.matmul, "bf16"
    elif device.type == "cuda":  # TF32 keeps 10 bits, enough for bfloat16's 8
        backend, mode = torch.backends.cuda.matmul, "tf32"
    else:
        yield
        return
    try:
        before = backend.fp32_precision
        backend.fp32_precision = mode
    except (AttributeError, RuntimeError):  # an older torch, or code that set TF32 through the legacy flags:
        yield  # the plain float32 path gives the same sums, only slower
        return
    try:
        yield
    finally:
        backend.fp32_precision = before
