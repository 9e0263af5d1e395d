"""Teacher-bounded L2 regression of Chen 2017 (docs/math.md §7), per row of D values (D = 4 for boxes):
    e_s = ||r_s - y||^2, e_t = ||r_t - y||^2
    L_b = sum_i w_i * [e_s + m > e_t] * e_s / Z,   Z = rows (no weight) or #{i : w_i > 0}
The bound is decided per row. The teacher only enters through the indicator, which is piecewise
constant in it, so it gets no gradient. A row whose e_s or e_t is NaN is neither in nor out of the
bound: its term and its gradient are NaN (a NaN teacher is not silently dropped). A row of weight 0 does not
exist for the op: its term and its gradient are exactly 0 whatever it holds (docs/math.md §0).
"""

import torch

from kdops._layout import acc_dtype
from kdops.reference._common import safe_mean, without_weightless


def _errors(student, teacher, target, weight, dtype):
    if weight is not None:
        keep = weight[:, None]
        student, teacher, target = (without_weightless(x, keep) for x in (student, teacher, target))
    y = target.to(dtype)
    e_s = (student.to(dtype) - y).square().sum(dim=1)
    e_t = (teacher.to(dtype) - y).square().sum(dim=1)
    return e_s, e_t


def _count(weight, rows, like):
    if weight is None:
        return torch.tensor(float(rows), dtype=like.dtype, device=like.device)
    return (weight > 0).sum().to(like.dtype)


def bounded_regression(student, teacher, *, target, weight=None, margin: float = 0.0):
    """student, teacher, target: (rows, D); weight: optional (rows,). Returns (0-dim loss, Z)."""
    dtype = acc_dtype(student.dtype)
    e_s, e_t = _errors(student, teacher, target, weight, dtype)
    zero = torch.zeros_like(e_s)
    unordered = e_s.isnan() | e_t.isnan()
    nan_row = e_s * zero.masked_fill(unordered, float("nan"))  # NaN with a NaN gradient on those rows only
    per_row = torch.where(e_s + margin > e_t, e_s, torch.where(unordered, nan_row, zero))
    if weight is not None:
        per_row = weight.to(dtype) * per_row
    count = _count(weight, e_s.shape[0], e_s)
    return safe_mean(per_row.sum(), count), count


def bounded_regression_backward(grad, student, teacher, target, weight, norm, margin: float):
    """dL/dr_s = grad / Z * w_i * [e_s + m > e_t] * 2 (r_s - y)."""
    dtype = acc_dtype(student.dtype)
    e_s, e_t = _errors(student, teacher, target, weight, dtype)
    active = (e_s + margin > e_t).to(dtype).masked_fill(e_s.isnan() | e_t.isnan(), float("nan"))
    g = 2 * (student.to(dtype) - target.to(dtype)) * active[:, None]
    if weight is not None:  # a bounded row's gradient is 0 whatever its weight (autograd of the forward's where)
        seen = torch.where(e_s + margin <= e_t, torch.zeros_like(e_s), weight.to(dtype))
        g = without_weightless(g * seen[:, None], weight[:, None])
    return (safe_mean(grad.to(dtype), norm.to(dtype)) * g).to(student.dtype)
