"""Localization distillation (LD, docs/math.md §11), per row of n box-edge bins:
    l_i = T^2 / n * KL(softmax(z_t[i] / T) || softmax(z_s[i] / T))
    L   = sum_i w_i l_i / Z,   Z = 1 ("sum"), rows ("mean") or sum_i w_i ("weight"), Z = 0 giving 0.
T^2 KL is CWD's row term (row_kl of the CWD reference, with its exact form for near rows). A row of weight 0 adds
exactly 0 to the value and the gradient whatever its logits hold (docs/math.md §0).
"""

import torch

from kdops._layout import acc_dtype
from kdops.reference._common import safe_mean, without_weightless
from kdops.reference.cwd_loss import row_kl, row_kl_grad


def _rows(student, teacher, weight):
    """Both sides in the accumulation dtype, weightless rows zeroed, and the weights (ones without them)."""
    dtype = acc_dtype(student.dtype)
    w = torch.ones(student.shape[0], dtype=dtype, device=student.device) if weight is None else weight.to(dtype)
    s, t = (without_weightless(x.to(dtype), w[:, None]) for x in (student, teacher))
    return s, t, w


def _norm(w, normalize):
    if normalize == "sum":
        return torch.ones((), dtype=w.dtype, device=w.device)
    if normalize == "mean":
        return torch.tensor(float(w.shape[0]), dtype=w.dtype, device=w.device)
    return w.sum()


def ld_loss(student, teacher, *, weight=None, temperature: float = 10.0, normalize: str = "mean"):
    """student, teacher: (rows, n); weight: optional (rows,). Returns (0-dim loss, Z) in the accumulation dtype."""
    s, t, w = _rows(student, teacher, weight)
    per_row = row_kl(s, t, temperature) / s.shape[1]
    total = torch.where(w == 0, torch.zeros_like(per_row), w * per_row).sum()
    norm = _norm(w, normalize)
    return safe_mean(total, norm), norm


def ld_loss_backward(grad, student, teacher, weight, norm, temperature: float):
    """dL/dz_s[i, j] = grad / Z * w_i * T / n * (P_s[i, j] - P_t[i, j])."""
    s, t, w = _rows(student, teacher, weight)
    g = row_kl_grad(s, t, temperature) / s.shape[1]
    g = torch.where(w[:, None] == 0, torch.zeros_like(g), w[:, None] * g)
    return (safe_mean(grad.to(s.dtype), norm.to(s.dtype)) * g).to(student.dtype)
