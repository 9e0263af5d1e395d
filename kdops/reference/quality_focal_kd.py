"""Quality-focal KD on sigmoid classification heads, BCKD's and CrossKD's classification term (docs/math.md §12).

Per row i (anchor or location) and class c, with s = sigmoid(z_s) and p = sigmoid(z_t):
    f_ic = BCE(z_s, p) * |s - p|^beta
    L    = sum_i w_i sum_c f_ic / Z,    Z = 1 ("sum"), rows ("mean"), sum_i w_i ("weight"; rows without weights)
Z = 0 gives L = 0. |d|^beta is taken through a select at d = 0, so its derivative there is 0 (sign(0) = 0) and
0^0 = 1. A row of weight 0 does not exist for the op: its term and its gradient are exactly 0 whatever it holds
(docs/math.md §0).
"""

import torch
import torch.nn.functional as F

from kdops._layout import QFKD_NORMALIZERS as NORMALIZERS, acc_dtype
from kdops.reference._common import safe_mean, without_weightless


def _logits(student, teacher, weight, dtype):
    zs, zt = student.to(dtype), teacher.to(dtype)
    if weight is not None:
        zs, zt = (without_weightless(z, weight[:, None]) for z in (zs, zt))
    return zs, zt


def _focal(a, beta: float):
    """|d|^beta from a = |d|, with a zero derivative at a = 0 and 0^0 = 1."""
    at_kink = a == 0
    powered = torch.where(at_kink, torch.ones_like(a), a).pow(beta)
    return torch.where(at_kink, torch.full_like(a, 1.0 if beta == 0 else 0.0), powered)


def _norm(weight, rows: int, normalize: str, like):
    if normalize == "weight" and weight is not None:
        return weight.to(like.dtype).sum()
    return torch.tensor(1.0 if normalize == "sum" else float(rows), dtype=like.dtype, device=like.device)


def quality_focal_kd(student, teacher, *, weight=None, beta: float = 1.0, normalize: str = "mean"):
    """student, teacher: (rows, C) logits; weight: optional (rows,). Returns (0-dim loss, Z) in the accumulation
    dtype."""
    dtype = acc_dtype(student.dtype)
    zs, zt = _logits(student, teacher, weight, dtype)
    p = torch.sigmoid(zt)
    bce = F.binary_cross_entropy_with_logits(zs, p, reduction="none")
    per_row = (bce * _focal((torch.sigmoid(zs) - p).abs(), beta)).sum(dim=1)
    if weight is not None:
        w = weight.to(dtype)
        per_row = torch.where(w == 0, torch.zeros_like(per_row), w * per_row)
    norm = _norm(weight, zs.shape[0], normalize, per_row)
    return safe_mean(per_row.sum(), norm), norm


def quality_focal_kd_backward(grad, student, teacher, weight, norm, beta: float):
    """dL/dz_s = grad / Z * w_i * (d |d|^beta + beta * bce * s (1 - s) * sign(d) |d|^(beta - 1)), 0 where d = 0."""
    dtype = acc_dtype(student.dtype)
    zs, zt = _logits(student, teacher, weight, dtype)
    s, p = torch.sigmoid(zs), torch.sigmoid(zt)
    bce = F.binary_cross_entropy_with_logits(zs, p, reduction="none")
    d = s - p
    a = d.abs()
    safe = torch.where(a == 0, torch.ones_like(a), a)
    g = torch.sign(d) * safe.pow(beta - 1) * (a * a + beta * bce * s * (1 - s))
    if weight is not None:
        g = without_weightless(weight.to(dtype)[:, None] * g, weight[:, None])
    return (safe_mean(grad.to(dtype), norm.to(dtype)) * g).to(student.dtype)
