"""Class-weighted soft cross-entropy of Chen 2017 (docs/math.md §7), with the hard CE optionally fused.

Per row i over classes c (background = class 0):
    soft_i = - sum_c w_c * softmax(z_t / T)[c] * log_softmax(z_s / T)[c]
    hard_i = - log_softmax(z_s)[y_i]                      (plain CE at temperature 1)
    L = sum over kept rows of (mu * hard_i + (1 - mu) * soft_i) / (number of kept rows)
Without a target every row is kept and L is the mean of soft_i. A row labelled ignore_index adds exactly 0 to the
value and the gradient whatever its logits hold (docs/math.md §0). A row whose target is neither ignore_index
nor in [0, C) gives NaN (the GPU kernels cannot raise without a host sync).
"""

import torch

from kdops._layout import acc_dtype
from kdops.reference._common import safe_mean, without_weightless


def _weights(class_weight, num_classes, like):
    if class_weight is None:
        return torch.ones(num_classes, dtype=like.dtype, device=like.device)
    return class_weight.to(like.dtype)


def _kept_and_valid(target, rows, num_classes, ignore_index, device):
    if target is None:
        ones = torch.ones(rows, dtype=torch.bool, device=device)
        return ones, ones
    keep = target != ignore_index
    valid = (target >= 0) & (target < num_classes)
    return keep, valid


def soft_cross_entropy(student, teacher, *, class_weight=None, target=None, temperature: float = 1.0, mu: float = 0.0,
                       ignore_index: int = -1):
    """Returns (0-dim loss in float32 / float64, number of kept rows in the same dtype)."""
    dtype = acc_dtype(student.dtype)
    rows, num_classes = student.shape
    keep, valid = _kept_and_valid(target, rows, num_classes, ignore_index, student.device)
    zs, zt = (without_weightless(z.to(dtype), keep[:, None]) for z in (student, teacher))
    w = _weights(class_weight, num_classes, zs)
    soft = -(w * torch.softmax(zt / temperature, dim=1) * torch.log_softmax(zs / temperature, dim=1)).sum(dim=1)
    if target is None:
        per_row = soft
    else:
        label = torch.where(valid, target, torch.zeros_like(target)).long()
        hard = -torch.log_softmax(zs, dim=1).gather(1, label[:, None]).squeeze(1)
        per_row = mu * hard + (1 - mu) * soft
        per_row = torch.where(valid | ~keep, per_row, torch.full_like(per_row, float("nan")))
    per_row = torch.where(keep, per_row, torch.zeros_like(per_row))
    count = keep.sum().to(dtype)
    return safe_mean(per_row.sum(), count), count


def soft_cross_entropy_backward(grad, student, teacher, class_weight, target, norm, temperature: float, mu: float,
                                ignore_index: int):
    """dL/dz_s[i, j] = grad / n_kept * keep_i * ((1 - mu) / T * (P_s[i, j] * W_i - w_j * P_t[i, j])
                                                + mu * (softmax(z_s)[i, j] - [j == y_i])),
    with W_i = sum_c w_c P_t[i, c] (mu = 0 without a target)."""
    dtype = acc_dtype(student.dtype)
    rows, num_classes = student.shape
    keep, valid = _kept_and_valid(target, rows, num_classes, ignore_index, student.device)
    zs, zt = (without_weightless(z.to(dtype), keep[:, None]) for z in (student, teacher))
    w = _weights(class_weight, num_classes, zs)
    ps, pt = torch.softmax(zs / temperature, dim=1), torch.softmax(zt / temperature, dim=1)
    g = (ps * (w * pt).sum(dim=1, keepdim=True) - w * pt) / temperature
    if target is not None:
        label = torch.where(valid, target, torch.zeros_like(target)).long()
        onehot = torch.nn.functional.one_hot(label, num_classes).to(dtype)
        g = (1 - mu) * g + mu * (torch.softmax(zs, dim=1) - onehot)
        g = torch.where((valid | ~keep)[:, None], g, torch.full_like(g, float("nan")))
    g = torch.where(keep[:, None], g, torch.zeros_like(g))
    coef = safe_mean(grad.to(dtype), norm.to(dtype))
    return (coef * g).to(student.dtype)
