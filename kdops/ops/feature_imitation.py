"""kdops.feature_imitation: masked feature imitation / hint loss (docs/math.md §5)."""

from typing import Optional

from torch import Tensor

from kdops import _backend, _checks, _registry
from kdops._layout import LOSSES, NORMALIZERS
from kdops._registry import acc_empty
from kdops.reference import feature_imitation as reference

OP = "feature_imitation"


def _backward(b):
    if not b.need & {"student", "teacher"}:
        return {}
    grad_student = b.run(grad=b.grads.loss)
    return {"student": grad_student, "teacher": -grad_student if "teacher" in b.need else None}


def _reference(student, teacher, mask, loss, normalize):  # the kernels' integer codes -> the reference's names
    return reference.feature_imitation(student, teacher, mask=mask, loss=LOSSES[loss], normalize=NORMALIZERS[normalize])


OP_SPEC = _registry.define(_registry.Op(
    OP, "(Tensor student, Tensor teacher, Tensor? mask, int loss, int normalize) -> (Tensor loss, Tensor norm)",
    fake=lambda a: (acc_empty(a.student), acc_empty(a.student)),
    reference=_reference,
    backward_schema="(Tensor grad, Tensor student, Tensor teacher, Tensor? mask, Tensor norm, int loss) -> Tensor",
    saved=("student", "teacher", "mask", "norm"), backward=_backward))


def feature_imitation(student: Tensor, teacher: Tensor, *, mask: Optional[Tensor] = None, loss: str = "mse",
                      normalize: str = "batch", backend: Optional[str] = None) -> Tensor:
    """Masked feature imitation: sum(M * rho(S - T)) / Z.

    Args:
        student, teacher: (N, C, H, W) features of the same shape, dtype and device (the student
            already adapted to the teacher's channels). The teacher may require grad: it then gets
            the negated student gradient.
        mask: optional (N, H, W) weight map broadcast over channels (float or bool; it is cast to
            the features' dtype and must not require grad). None means all ones.
        loss: "mse" (rho = d^2) or "l1" (rho = |d|).
        normalize: Z = "batch" (N), "mean" (element count) or "mask" (C * sum(M), 0/0 = 0).
        backend: None (automatic), "reference", "cpu", "cuda" or "triton".

    Returns:
        0-dim loss, float32 (float64 for float64 inputs). An empty batch (N = 0) returns 0.
    """
    _checks.feature(student, OP, "student")
    _checks.tensor(teacher, OP, "teacher")
    _checks.same_layout(student, teacher, OP, "student", "teacher")
    _checks.choice(loss, LOSSES, OP, "loss")
    _checks.choice(normalize, NORMALIZERS, OP, "normalize")
    if mask is not None:
        mask = _checks.pixel_map(mask, student, OP, "mask")
    which = _backend.resolve(OP, student.device, backend)
    return OP_SPEC(which, student=student, teacher=teacher, mask=mask, loss=LOSSES.index(loss),
                normalize=NORMALIZERS.index(normalize))[0]
