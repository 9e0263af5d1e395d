"""kdops.bounded_regression: Chen 2017's teacher-bounded L2 regression loss (docs/math.md §7)."""

from typing import Optional, Tuple

import torch
from torch import Tensor

from kdops import _backend, _checks, _registry
from kdops.reference import bounded_regression as reference

OP = "bounded_regression"


@torch.library.custom_op("kdops_triton::bounded_regression", mutates_args=())
def _triton_forward(student: Tensor, teacher: Tensor, target: Tensor, weight: Optional[Tensor],
                    margin: float) -> Tuple[Tensor, Tensor]:
    from kdops.triton import bounded_regression as kernels
    return kernels.forward(student, teacher, target, weight, margin)


@torch.library.custom_op("kdops_triton::bounded_regression_backward", mutates_args=())
def _triton_backward(grad: Tensor, student: Tensor, teacher: Tensor, target: Tensor, weight: Optional[Tensor],
                     norm: Tensor, margin: float) -> Tensor:
    from kdops.triton import bounded_regression as kernels
    return kernels.backward(grad, student, teacher, target, weight, norm, margin)


def _fake_forward(student, teacher, target, weight, margin):
    dtype = _registry.acc_dtype(student.dtype)
    return student.new_empty((), dtype=dtype), student.new_empty((), dtype=dtype)


def _fake_backward(grad, student, teacher, target, weight, norm, margin):
    return torch.empty_like(student, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    student, teacher, target, weight, margin = inputs
    ctx.save_for_backward(student, teacher, target, weight, output[1])
    ctx.margin = margin


def _make_backward(backward_op):
    def backward(ctx, grad, _grad_norm):
        if ctx.needs_input_grad[2]:
            raise RuntimeError(f"kdops.{OP}: target gets no gradient; pass target.detach()")
        student, teacher, target, weight, norm = ctx.saved_tensors
        grad_student = None
        if ctx.needs_input_grad[0]:
            grad_student = backward_op(grad, student, teacher, target, weight, norm, ctx.margin)
        # The teacher only moves the bound, a step function of it: its gradient is 0 almost everywhere.
        return grad_student, None, None, None, None
    return backward


for _name in ("kdops::bounded_regression", "kdops_triton::bounded_regression"):
    _registry.register(_name, _name + "_backward", _fake_forward, _fake_backward, _setup_context, _make_backward)


def bounded_regression(student_reg: Tensor, teacher_reg: Tensor, target: Tensor, margin: float = 0.0,
                       weight: Optional[Tensor] = None, *, backend: Optional[str] = None) -> Tensor:
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
        margin: m in the bound (any finite number; 0 in the paper's experiments).
        weight: optional (...) per-row constant weight (e.g. 1 for positive proposals, 0 else).
            Without it Z is the number of rows; with it Z is the number of rows with weight > 0.
            Z = 0 gives a loss of 0.
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
    acc = _registry.acc_dtype(student_reg.dtype)
    if weight is not None:
        _checks.float_tensor(weight, OP, "weight")
        if weight.shape != rows_shape:
            raise ValueError(f"kdops.{OP}: weight must have the rows' shape {tuple(rows_shape)}, "
                             f"got {tuple(weight.shape)}")
        weight = _checks.weight_vector(weight.reshape(-1), weight.numel(), student_reg, acc, OP, "weight")
    which = _backend.resolve(OP, student_reg.device, backend)
    out = _registry.call(which, OP, reference.bounded_regression, student_reg.reshape(-1, d),
                         teacher_reg.reshape(-1, d), target.reshape(-1, d), weight, margin)
    return out[0]
