"""kdops.relation_mse: FGD's global (relation) loss after the GcBlocks (docs/math.md §4)."""

from typing import Optional

from torch import Tensor

from kdops import _backend, _checks, _registry
from kdops._layout import acc_dtype
from kdops._registry import acc_empty
from kdops.reference import relation_mse as reference

OP = "relation_mse"


def _backward(b):
    out, s = {}, b.saved
    if b.need & {"student", "teacher"}:
        grad_student = b.run(grad=b.grads.loss)
        out["student"], out["teacher"] = grad_student, -grad_student if "teacher" in b.need else None
    if b.need & {"delta_s", "delta_t"}:
        # dL/ddelta_s[n, c] = 2 grad / N * sum_hw (S + delta_s - T - delta_t): no pass over the features.
        grad_delta = b.grads.loss.to(s.row_sum.dtype) * (2.0 / max(s.student.shape[0], 1)) * s.row_sum
        out["delta_s"], out["delta_t"] = grad_delta, -grad_delta if "delta_t" in b.need else None
    return out


OP_SPEC = _registry.define(_registry.Op(
    OP, "(Tensor student, Tensor teacher, Tensor delta_s, Tensor delta_t) -> (Tensor loss, Tensor row_sum)",
    fake=lambda a: (acc_empty(a.student), acc_empty(a.student, *a.student.shape[:2])),
    reference=reference.relation_mse,
    backward_schema="(Tensor grad, Tensor student, Tensor teacher, Tensor delta_s, Tensor delta_t) -> Tensor",
    saved=("student", "teacher", "delta_s", "delta_t", "row_sum"), non_differentiable=("row_sum",),
    backward=_backward))


def relation_mse(student: Tensor, teacher: Tensor, *, delta_s: Tensor, delta_t: Tensor,
                 backend: Optional[str] = None) -> Tensor:
    """FGD relation loss: sum (S + delta_s - T - delta_t)^2 / N, deltas broadcast over H, W (docs/math.md §4).

    Args:
        student, teacher: (N, C, H, W) features of the same shape, dtype and device. The teacher may
            require grad: it then gets the negated student gradient.
        delta_s, delta_t: (N, C) GcBlock outputs of the student and the teacher side (any floating
            dtype; computed in float32, float64 for float64 features).
        backend: None (automatic), "reference", "cpu", "cuda" or "triton".

    Returns:
        0-dim loss, float32 (float64 for float64 features), differentiable with respect to all four
        inputs. An empty batch (N = 0) gives 0.
    """
    _checks.feature(student, OP, "student")
    _checks.tensor(teacher, OP, "teacher")
    _checks.same_layout(student, teacher, OP, "student", "teacher")
    n, c = student.shape[:2]
    acc = acc_dtype(student.dtype)
    for name, d in (("delta_s", delta_s), ("delta_t", delta_t)):
        _checks.float_tensor(d, OP, name)
        if d.shape != (n, c):
            raise ValueError(f"kdops.{OP}: {name} must have shape (N, C) = {(n, c)}, got {tuple(d.shape)}")
        if d.device != student.device:
            raise ValueError(f"kdops.{OP}: {name} must be on {student.device} like the features, got {d.device}")
    which = _backend.resolve(OP, student.device, backend)
    return OP_SPEC(which, student=student, teacher=teacher, delta_s=delta_s.to(acc), delta_t=delta_t.to(acc))[0]
