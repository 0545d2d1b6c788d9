"""Turn per-block scores into per-block sparsities around a global target (shared by DLP and OWL).

OWL and DLP both min-max scale a per-block quantity to [0, 2·spread], centre it on the target density
1 − s, and read sparsity = 1 − density; a block whose sparsity falls to 0 or below gets 0.01 (the reference
code's clamp), and we also cap at 0.99 so no block is wiped out. Whether the mean still equals s after
clamping is recorded, not assumed.
"""
import numpy as np


def minmax(values, spread: float) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    width = v.max() - v.min()
    if width == 0:  # all blocks equal: nothing to rank, every block gets the target
        return np.zeros_like(v)
    return (v - v.min()) / width * (2 * spread)


def densities_to_sparsities(scaled, target: float) -> tuple[list[float], bool]:
    density = np.asarray(scaled) - np.mean(scaled) + (1.0 - target)
    sparsity = 1.0 - density
    clamped = bool((sparsity <= 0).any() or (sparsity > 0.99).any())
    sparsity = np.where(sparsity <= 0, 0.01, np.minimum(sparsity, 0.99))
    return [float(x) for x in sparsity], clamped
