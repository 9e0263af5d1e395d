"""FGD relation (global) loss, docs/math.md §4: sum (S + delta_s - T - delta_t)^2 / N, deltas (N, C)
broadcast over H, W."""

from kdops._layout import to_acc


def _residual(student, teacher, delta_s, delta_t):
    s = to_acc(student)
    delta = (delta_s - delta_t).to(s.dtype)
    return s - to_acc(teacher) + delta[:, :, None, None]


def relation_mse(student, teacher, *, delta_s, delta_t):
    """0-dim loss in float32 (float64 for float64 features); an empty batch gives 0."""
    n = student.shape[0]
    r = _residual(student, teacher, delta_s, delta_t)
    return (r * r).sum() / max(n, 1)


def relation_mse_backward(grad, student, teacher, delta_s, delta_t):
    """dL/dS = 2 grad / N * residual (dL/dT is its negation)."""
    n = student.shape[0]
    r = _residual(student, teacher, delta_s, delta_t)
    return (2.0 * grad.to(r.dtype) / max(n, 1) * r).to(student.dtype)
