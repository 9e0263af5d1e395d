"""kdops.bounded_regression: Chen 2017's teacher-bounded L2 regression loss (docs/math.md §7)."""

from typing import Optional

from torch import Tensor

from kdops import _backend, _checks, _registry
from kdops._layout import acc_dtype
from kdops._registry import acc_empty
from kdops.reference import bounded_regression as reference

OP = "bounded_regression"


def _backward(b):
    _checks.no_grad_needed("target" in b.need, OP, "target")
    # The teacher only moves the bound, a step function of it: its gradient is 0 almost everywhere.
    if "student" not in b.need:
        return {}
    return {"student": b.run(grad=b.grads.loss)}


OP_SPEC = _registry.define(_registry.Op(
    OP, "(Tensor student, Tensor teacher, Tensor target, Tensor? weight, float margin) -> (Tensor loss, Tensor norm)",
    fake=lambda a: (acc_empty(a.student), acc_empty(a.student)),
    reference=reference.bounded_regression,
    backward_schema="(Tensor grad, Tensor student, Tensor teacher, Tensor target, Tensor? weight, Tensor norm, "
                    "float margin) -> Tensor",
    saved=("student", "teacher", "target", "weight", "norm"), backward=_backward))


def bounded_regression(student_reg: Tensor, teacher_reg: Tensor, *, target: Tensor, weight: Optional[Tensor] = None,
                       margin: float = 0.0, backend: Optional[str] = None) -> Tensor:
    """Teacher-bounded L2 regression loss of Chen et al. 2017 (eq. 4), per row of the last dimension.

    With e_s = ||r_s - y||^2 and e_t = ||r_t - y||^2 over each row's D values,
    L_b = sum_i w_i [e_s + margin > e_t] e_s / Z: a row is penalised only while the student is not
    better than the teacher by the margin. The bound is decided per row, never per batch. The
    paper's full regression loss is smoothL1(r_s, y) + nu * L_b with nu = 0.5 (see
    kdops.nn.BoundedRegressionLoss).

    Args:
        student_reg, teacher_reg, target: (..., D) tensors of the same shape, dtype and device
            (D = 4 for encoded box deltas; e.g. (rows, 4) or (rows, classes, 4)). The teacher may
            require grad but gets none (it only moves the bound: zero gradient almost everywhere);
            the target must not require grad.
        weight: optional (...) per-row constant weight (e.g. 1 for positive proposals, 0 else).
            Without it Z is the number of rows; with it Z is the number of rows with weight > 0.
            Z = 0 gives a loss of 0.
        margin: m in the bound (any finite number; 0 in the paper's experiments).
        backend: None (automatic), "reference", "cpu", "cuda" or "triton".

    Returns:
        0-dim loss, float32 (float64 for float64 inputs).
    """
    _checks.float_tensor(student_reg, OP, "student_reg")
    _checks.tensor(teacher_reg, OP, "teacher_reg")
    _checks.tensor(target, OP, "target")
    if student_reg.dim() < 1 or student_reg.shape[-1] == 0:
        raise ValueError(f"kdops.{OP}: student_reg must have a non-empty last dimension, "
                         f"got shape {tuple(student_reg.shape)}")
    _checks.same_layout(student_reg, teacher_reg, OP, "student_reg", "teacher_reg")
    _checks.same_layout(student_reg, target, OP, "student_reg", "target")
    _checks.detached(target, OP, "target")
    margin = _checks.number(margin, OP, "margin")
    rows_shape, d = student_reg.shape[:-1], student_reg.shape[-1]
    acc = acc_dtype(student_reg.dtype)
    if weight is not None:
        _checks.float_tensor(weight, OP, "weight")
        if weight.shape != rows_shape:
            raise ValueError(f"kdops.{OP}: weight must have the rows' shape {tuple(rows_shape)}, "
                             f"got {tuple(weight.shape)}")
        weight = _checks.weight_vector(weight.reshape(-1), weight.numel(), student_reg, acc, OP, "weight")
    which = _backend.resolve(OP, student_reg.device, backend)
    return OP_SPEC(which, student=student_reg.reshape(-1, d), teacher=teacher_reg.reshape(-1, d),
                target=target.reshape(-1, d), weight=weight, margin=margin)[0]
