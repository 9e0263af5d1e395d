"""FGD relation (global) loss, docs/math.md §4: sum (S + delta_s - T - delta_t)^2 / N, deltas (N, C)
broadcast over H, W."""

import torch


def _acc(x: torch.Tensor) -> torch.Tensor:
    return x.double() if x.dtype == torch.float64 else x.float()


def _residual(student, teacher, delta_s, delta_t):
    s = _acc(student)
    delta = (delta_s - delta_t).to(s.dtype)
    return s - _acc(teacher) + delta[:, :, None, None]


def relation_mse(student, teacher, delta_s, delta_t):
    """0-dim loss in float32 (float64 for float64 features); an empty batch gives 0."""
    n = student.shape[0]
    r = _residual(student, teacher, delta_s, delta_t)
    return (r * r).sum() / max(n, 1)


def relation_mse_row_sum(student, teacher, delta_s, delta_t):
    """sum over H, W of the residual, (N, C): what the delta gradients need."""
    return _residual(student, teacher, delta_s, delta_t).sum(dim=(2, 3))


def relation_mse_backward(grad, student, teacher, delta_s, delta_t):
    """dL/dS = 2 grad / N * residual (dL/dT is its negation)."""
    n = student.shape[0]
    r = _residual(student, teacher, delta_s, delta_t)
    return (2.0 * grad.to(r.dtype) / max(n, 1) * r).to(student.dtype)
