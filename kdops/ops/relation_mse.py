"""kdops.relation_mse: FGD's global (relation) loss after the GcBlocks (docs/math.md §4)."""

from typing import Optional, Tuple

import torch
from torch import Tensor

from kdops import _backend, _checks, _registry
from kdops.reference import relation_mse as reference

OP = "relation_mse"


@torch.library.custom_op("kdops_triton::relation_mse", mutates_args=())
def _triton_forward(student: Tensor, teacher: Tensor, delta_s: Tensor, delta_t: Tensor) -> Tuple[Tensor, Tensor]:
    from kdops.triton import relation_mse as kernels
    return kernels.forward(student, teacher, delta_s, delta_t)


@torch.library.custom_op("kdops_triton::relation_mse_backward", mutates_args=())
def _triton_backward(grad: Tensor, student: Tensor, teacher: Tensor, delta_s: Tensor, delta_t: Tensor) -> Tensor:
    from kdops.triton import relation_mse as kernels
    return kernels.backward(grad, student, teacher, delta_s, delta_t)


def _fake_forward(student, teacher, delta_s, delta_t):
    dtype = _registry.acc_dtype(student.dtype)
    return student.new_empty((), dtype=dtype), student.new_empty(student.shape[:2], dtype=dtype)


def _fake_backward(grad, student, teacher, delta_s, delta_t):
    return torch.empty_like(student, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    student, teacher, delta_s, delta_t = inputs
    ctx.save_for_backward(student, teacher, delta_s, delta_t, output[1])
    ctx.mark_non_differentiable(output[1])


def _make_backward(backward_op):
    def backward(ctx, grad, _grad_row_sum):
        student, teacher, delta_s, delta_t, row_sum = ctx.saved_tensors
        need_s, need_t, need_ds, need_dt = ctx.needs_input_grad
        grad_student = grad_delta = None
        if need_s or need_t:
            grad_student = backward_op(grad, student, teacher, delta_s, delta_t)
        if need_ds or need_dt:
            # dL/ddelta_s[n, c] = 2 grad / N * sum_hw (S + delta_s - T - delta_t): no pass over the features.
            grad_delta = grad.to(row_sum.dtype) * (2.0 / max(student.shape[0], 1)) * row_sum
        return (grad_student if need_s else None, -grad_student if need_t else None,
                grad_delta if need_ds else None, -grad_delta if need_dt else None)
    return backward


for _name in ("kdops::relation_mse", "kdops_triton::relation_mse"):
    _registry.register(_name, _name + "_backward", _fake_forward, _fake_backward, _setup_context, _make_backward)


def _reference(student, teacher, delta_s, delta_t):
    return reference.relation_mse(student, teacher, delta_s, delta_t), None


def relation_mse(student: Tensor, teacher: Tensor, delta_s: Tensor, delta_t: Tensor, *,
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
    acc = _registry.acc_dtype(student.dtype)
    for name, d in (("delta_s", delta_s), ("delta_t", delta_t)):
        _checks.float_tensor(d, OP, name)
        if d.shape != (n, c):
            raise ValueError(f"kdops.{OP}: {name} must have shape (N, C) = {(n, c)}, got {tuple(d.shape)}")
        if d.device != student.device:
            raise ValueError(f"kdops.{OP}: {name} must be on {student.device} like the features, got {d.device}")
    which = _backend.resolve(OP, student.device, backend)
    return _registry.call(which, OP, _reference, student, teacher, delta_s.to(acc), delta_t.to(acc))[0]
