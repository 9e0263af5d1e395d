"""Small helpers shared by the head/channel reference losses."""

import torch


def safe_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """total / count with 0 / 0 = 0, and no host sync."""
    return torch.where(count == 0, torch.zeros_like(total), total / torch.where(count == 0, torch.ones_like(count), count))


def without_weightless(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x with 0 wherever its weight (broadcast against x) is 0: such rows and pixels do not exist for the op
    (docs/math.md §0). Zeroing the input itself, not only the weighted term, keeps a NaN or an infinity there
    out of the gradient too: torch.where passes the unselected input a zero gradient."""
    return torch.where(weight == 0, torch.zeros_like(x), x)
