"""The bench's precisions: a weights' dtype, or MIXED: float32 weights whose forward passes run under bfloat16
autocast (model.compute_dtype=bfloat16, dlp/walk/compute_dtype.py); statistics, criteria and weights stay float32."""
import torch

from dlp.storage.models import DTYPES

MIXED = "mixed"
PRECISIONS = {**{name: (name, None) for name in DTYPES}, MIXED: ("float32", "bfloat16")}


def products_dtype(name: str) -> torch.dtype:
    """The dtype the passes multiply in, whose matmul peak their share is measured against."""
    weights, compute = PRECISIONS[name]
    return DTYPES[compute or weights]
