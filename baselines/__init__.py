"""Baselines: within-layer criteria (magnitude, Wanda, SparseGPT) and layerwise allocations."""
