"""Binary (RPN objectness) variant of the weighted soft cross-entropy (docs/math.md §7).

Per anchor with x = z_s / T and p_t = sigmoid(z_t / T):
    soft = - (w_pos * p_t * log sigmoid(x) + w_neg * (1 - p_t) * log sigmoid(-x))
    hard = - (y * log sigmoid(z_s) + (1 - y) * log sigmoid(-z_s))      (y in {0, 1}, temperature 1)
    L = sum over kept anchors of (mu * hard + (1 - mu) * soft) / (number of kept anchors)
Anchors labelled ignore_index are skipped: their value and gradient are exactly 0 whatever their logits hold
(docs/math.md §0); any other label outside {0, 1} gives NaN.
"""

import torch
import torch.nn.functional as F

from kdops._layout import acc_dtype
from kdops.reference._common import safe_mean, without_weightless


def _kept_and_valid(target, like, ignore_index):
    if target is None:
        ones = torch.ones_like(like, dtype=torch.bool)
        return ones, ones
    return target != ignore_index, (target == 0) | (target == 1)


def soft_binary_cross_entropy(student, teacher, *, target=None, pos_weight: float = 1.0, neg_weight: float = 1.5,
                              temperature: float = 1.0, mu: float = 0.0, ignore_index: int = -1):
    """Returns (0-dim loss in float32 / float64, number of kept anchors in the same dtype)."""
    dtype = acc_dtype(student.dtype)
    keep, valid = _kept_and_valid(target, student, ignore_index)
    zs, zt = (without_weightless(z.to(dtype), keep) for z in (student, teacher))
    x, pt = zs / temperature, torch.sigmoid(zt / temperature)
    per = -(pos_weight * pt * F.logsigmoid(x) + neg_weight * (1 - pt) * F.logsigmoid(-x))
    if target is not None:
        y = target.to(dtype)
        hard = -(y * F.logsigmoid(zs) + (1 - y) * F.logsigmoid(-zs))
        per = mu * hard + (1 - mu) * per
        per = torch.where(valid | ~keep, per, torch.full_like(per, float("nan")))
    per = torch.where(keep, per, torch.zeros_like(per))
    count = keep.sum().to(dtype)
    return safe_mean(per.sum(), count), count


def soft_binary_cross_entropy_backward(grad, student, teacher, target, norm, pos_weight: float, neg_weight: float,
                                       temperature: float, mu: float, ignore_index: int):
    """dL/dz_s = grad / n_kept * keep * ((1 - mu) / T * (w_neg (1 - p_t) s - w_pos p_t (1 - s)) + mu * (sigmoid(z_s) - y)),
    with s = sigmoid(z_s / T)."""
    dtype = acc_dtype(student.dtype)
    keep, valid = _kept_and_valid(target, student, ignore_index)
    zs, zt = (without_weightless(z.to(dtype), keep) for z in (student, teacher))
    s, pt = torch.sigmoid(zs / temperature), torch.sigmoid(zt / temperature)
    g = (neg_weight * (1 - pt) * s - pos_weight * pt * (1 - s)) / temperature
    if target is not None:
        g = (1 - mu) * g + mu * (torch.sigmoid(zs) - target.to(dtype))
        g = torch.where(valid | ~keep, g, torch.full_like(g, float("nan")))
    g = torch.where(keep, g, torch.zeros_like(g))
    return (safe_mean(grad.to(dtype), norm.to(dtype)) * g).to(student.dtype)
