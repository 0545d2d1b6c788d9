"""Within-layer criteria by name."""
from dlp.errors import UserError

from .base import Criterion
from .magnitude import Magnitude
from .sparsegpt import SparseGPT
from .wanda import Wanda

CRITERIA = {"magnitude": Magnitude, "wanda": Wanda, "sparsegpt": SparseGPT}


def make_criterion(name: str, **params) -> Criterion:
    if name not in CRITERIA:
        raise UserError(f"unknown criterion '{name}'; choose one of {', '.join(CRITERIA)} (or none for dense)")
    return CRITERIA[name](**params)
