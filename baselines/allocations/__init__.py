"""Layerwise allocations by name."""
from dlp.errors import UserError

from .base import Allocation, Allocator
from .uniform import Uniform

ALLOCATIONS = {"uniform": Uniform}


def make_allocator(name: str, **params) -> Allocator:
    if name not in ALLOCATIONS:
        raise UserError(f"unknown allocation '{name}'; choose one of {', '.join(ALLOCATIONS)}")
    return ALLOCATIONS[name](**params)
