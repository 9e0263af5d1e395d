"""Masked feature imitation, docs/math.md §5: L = sum M * rho(S - T) / Z. A pixel of mask 0 does not exist for the
op: its term and its gradients are exactly 0 whatever S and T hold there (docs/math.md §0)."""

import torch

from kdops._layout import acc_dtype
from kdops.reference._common import without_weightless


def normalizer(student: torch.Tensor, mask, normalize: str) -> torch.Tensor:
    n, c, h, w = student.shape
    dtype = acc_dtype(student.dtype)
    if normalize == "batch":
        z = float(n)
    elif normalize == "mean":
        z = float(student.numel())
    elif mask is None:
        z = float(c * n * h * w)
    else:
        return c * mask.to(dtype).sum()
    return torch.tensor(z, dtype=dtype, device=student.device)


def feature_imitation(student, teacher, *, mask=None, loss: str = "mse", normalize: str = "batch"):
    """Returns a 0-dim loss in float32 (float64 for float64 inputs); an empty batch gives 0."""
    dtype = acc_dtype(student.dtype)
    d = student.to(dtype) - teacher.to(dtype)
    if mask is not None:
        d = without_weightless(d, mask.unsqueeze(1))
    r = d * d if loss == "mse" else d.abs()
    if mask is not None:
        r = r * mask.to(dtype).unsqueeze(1)
    z = normalizer(student, mask, normalize)
    total = r.sum()
    return torch.where(z == 0, torch.zeros_like(total), total / torch.where(z == 0, torch.ones_like(z), z))


def feature_imitation_backward(grad, student, teacher, mask, norm, loss: str):
    """dL/dS = grad / Z * M * rho'(S - T); dL/dT is its negation."""
    dtype = acc_dtype(student.dtype)
    d = student.to(dtype) - teacher.to(dtype)
    g = 2 * d if loss == "mse" else torch.sign(d)
    if mask is not None:
        g = without_weightless(g * mask.to(dtype).unsqueeze(1), mask.unsqueeze(1))
    coef = torch.where(norm == 0, torch.zeros_like(norm), grad.to(dtype) / torch.where(norm == 0, torch.ones_like(norm), norm))
    return (coef * g).to(student.dtype)
