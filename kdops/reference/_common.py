"""Small helpers shared by the head/channel reference losses."""

import torch


def safe_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """total / count with 0 / 0 = 0, and no host sync."""
    return torch.where(count == 0, torch.zeros_like(total), total / torch.where(count == 0, torch.ones_like(count), count))
