"""Compute precision: float32 weights whose forward passes run in a lower precision (autocast).

A float32 model may run its forward passes under autocast (`model.compute_dtype: bfloat16`): every Linear and
attention product takes bfloat16 operands and accumulates in float32, while the weights, the residual
stream, the statistics (float32 sums, see dlp.walk.stats) and the criterion's own arithmetic (SparseGPT's
factorisation and updates) stay float32. Only the products' operands are rounded, not the weights or the sums
they feed, so perplexity stays closer to float32 than with bfloat16 weights, at about the bfloat16 model's speed
(results/bench.md compares the three).

The compute dtype travels with the model (an attribute set at load time), as its dtype does, so that every
pass over it (allocation profile, prune, perplexity, zero-shot) runs the same way without each caller
threading it through.
"""
import contextlib

import torch

from dlp.errors import UserError

COMPUTE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
_ATTR = "dlp_compute_dtype"


def check_compute_dtype(name: str | None, weights_dtype: str) -> None:
    """One-line error for a compute dtype that cannot apply: unknown, or with weights that are not float32
    (autocast only lowers precision; a bfloat16 model's passes already run in bfloat16)."""
    if name is None:
        return
    if name not in COMPUTE_DTYPES:
        raise UserError(f"unknown compute_dtype '{name}'; choose one of {', '.join(COMPUTE_DTYPES)}, or null")
    if weights_dtype != "float32":
        raise UserError(f"compute_dtype={name} needs dtype=float32 weights (got {weights_dtype}): it runs "
                        "float32 weights' passes in a lower precision")


def set_compute_dtype(model: torch.nn.Module, name: str | None) -> None:
    """`name` None: passes run in the weights' dtype; else under autocast to it (see check_compute_dtype)."""
    check_compute_dtype(name, str(next(model.parameters()).dtype).removeprefix("torch."))
    setattr(model, _ATTR, None if name is None else COMPUTE_DTYPES[name])


def compute_dtype_of(model: torch.nn.Module) -> torch.dtype | None:
    return getattr(model, _ATTR, None)


def working_tolerance(model: torch.nn.Module, full: dict, reduced: float) -> float:
    """A check's tolerance by the precision the model computes in: `full[dtype]` for weights of a dtype it
    names and no reduced compute dtype, else `reduced` (bfloat16 or float16 rounding)."""
    dtype = next(model.parameters()).dtype
    return reduced if compute_dtype_of(model) is not None or dtype not in full else full[dtype]


def computing(dtype: torch.dtype | None, device: torch.device):
    """The context a forward pass runs in: autocast to `dtype`, or nothing. Scope it to passes whose weights do
    not change inside it: autocast caches each float32 weight's lower-precision copy until the context exits,
    so a context spanning a prune would keep multiplying by the unpruned copies."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def full_precision(device: torch.device):
    """Switch autocast off (inside a forward hook, say): statistics are float32 sums whatever the pass runs in."""
    return torch.autocast(device.type, enabled=False)
