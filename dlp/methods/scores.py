"""The Wanda score |W_ij|·‖X_j‖₂: the statistic DLP ranks blocks by (dlp.methods.profile) and Wanda prunes by."""
import torch

from dlp.walk.stats import LinearStats


def wanda_scores(weight: torch.Tensor, stats: LinearStats) -> torch.Tensor:
    # Float32 scores whatever the weight's dtype (as the promoted product gave), multiplied in place: one new
    # tensor instead of two.
    return weight.abs().to(torch.float32).mul_(stats.column_norm().to(weight.device).unsqueeze(0))
