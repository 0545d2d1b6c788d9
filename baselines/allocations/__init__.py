"""Layerwise allocations by name (DLP itself lives in the core package, dlp.allocation)."""
from dlp.allocation import DLP
from dlp.allocator import Allocation, Allocator
from dlp.errors import UserError

from .alpha import AlphaPruning
from .owl import OWL
from .uniform import Uniform

ALLOCATIONS = {"uniform": Uniform, "owl": OWL, "dlp": DLP, "alphapruning": AlphaPruning}


def make_allocator(name: str, **params) -> Allocator:
    if name not in ALLOCATIONS:
        raise UserError(f"unknown allocation '{name}'; choose one of {', '.join(ALLOCATIONS)}")
    return ALLOCATIONS[name](**params)
