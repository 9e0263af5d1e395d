"""kdops.quality_focal_kd: quality-focal KD on sigmoid classification heads, the classification term of BCKD and
CrossKD (docs/math.md §12)."""

from typing import Optional

from torch import Tensor

from kdops import _backend, _checks, _registry
from kdops._layout import acc_dtype
from kdops._registry import acc_empty
from kdops.reference import quality_focal_kd as reference

OP = "quality_focal_kd"


OP_SPEC = _registry.define(_registry.Op(
    OP, "(Tensor student, Tensor teacher, Tensor? weight, float beta, str normalize) -> (Tensor loss, Tensor norm)",
    fake=lambda a: (acc_empty(a.student), acc_empty(a.student)),
    reference=reference.quality_focal_kd,
    backward_schema="(Tensor grad, Tensor student, Tensor teacher, Tensor? weight, Tensor norm, float beta) -> Tensor",
    saved=("student", "teacher", "weight", "norm"), backward=_registry.teacher_gets_no_gradient(OP, "teacher_logits")))


def quality_focal_kd(student_logits: Tensor, teacher_logits: Tensor, *, weight: Optional[Tensor] = None,
                     beta: float = 1.0, normalize: str = "mean", backend: Optional[str] = None) -> Tensor:
    """Quality-focal KD between two sigmoid classification heads (BCKD, CrossKD; docs/math.md §12).

    With s = sigmoid(z_s) and p = sigmoid(z_t), each row i (anchor or location) and class c contributes
    f_ic = BCE(z_s, p) * |s - p|^beta, and the loss is sum_i w_i sum_c f_ic / Z. The official code divides
    the sum by the number of positive anchors (its avg_factor): take normalize="sum" and divide, or use
    kdops.nn.QualityFocalKDLoss(avg_factor=...).

    Args:
        student_logits, teacher_logits: (..., C) logits of the same shape, dtype and device; the leading
            dimensions are the rows, C >= 1 the classes. The teacher gets no gradient: it must not require grad.
        weight: optional constant per-row weight of the rows' shape (e.g. mmdet's label_weights: 1 for a
            sampled anchor, 0 for an ignored one). A row of weight 0 adds exactly 0 and gets a zero gradient,
            whatever its logits hold.
        beta: the focusing exponent, a finite number >= 0 (1 in the official code; 0 gives the plain BCE to
            the teacher's probabilities).
        normalize: Z = "sum" (1), "mean" (the number of rows, weight 0 included) or "weight" (the sum of
            the weights; the number of rows without weights). Z = 0 gives a loss of 0.
        backend: None (automatic), "reference", "cpu", "cuda" or "triton".

    Returns:
        0-dim loss, float32 (float64 for float64 logits).
    """
    _checks.float_tensor(student_logits, OP, "student_logits")
    _checks.tensor(teacher_logits, OP, "teacher_logits")
    if student_logits.dim() < 1 or student_logits.shape[-1] == 0:
        raise ValueError(f"kdops.{OP}: student_logits must be (..., C) with C >= 1 classes, "
                         f"got shape {tuple(student_logits.shape)}")
    _checks.same_layout(student_logits, teacher_logits, OP, "student_logits", "teacher_logits")
    _checks.detached(teacher_logits, OP, "teacher_logits")
    beta = _checks.number(beta, OP, "beta")
    if beta < 0:
        raise ValueError(f"kdops.{OP}: beta must be a number >= 0, got {beta!r}")
    _checks.choice(normalize, reference.NORMALIZERS, OP, "normalize")
    rows_shape, classes = student_logits.shape[:-1], student_logits.shape[-1]
    if weight is not None:
        _checks.float_tensor(weight, OP, "weight")
        if weight.shape != rows_shape:
            raise ValueError(f"kdops.{OP}: weight must have the rows' shape {tuple(rows_shape)}, "
                             f"got {tuple(weight.shape)}")
        weight = _checks.weight_vector(weight.reshape(-1), weight.numel(), student_logits,
                                       acc_dtype(student_logits.dtype), OP, "weight")
    which = _backend.resolve(OP, student_logits.device, backend)
    return OP_SPEC(which, student=student_logits.reshape(-1, classes), teacher=teacher_logits.reshape(-1, classes),
                   weight=weight, beta=beta, normalize=normalize)[0]
