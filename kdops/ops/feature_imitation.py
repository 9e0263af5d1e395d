"""kdops.feature_imitation: masked feature imitation / hint loss (docs/math.md §5)."""

from typing import Optional, Tuple

import torch
from torch import Tensor

from kdops import _backend, _checks, _registry
from kdops.reference import feature_imitation as reference

OP = "feature_imitation"
LOSSES = reference.LOSSES          # index = the integer code the kernels take
NORMALIZERS = reference.NORMALIZERS


@torch.library.custom_op("kdops_triton::feature_imitation", mutates_args=())
def _triton_forward(student: Tensor, teacher: Tensor, mask: Optional[Tensor], loss: int,
                    normalize: int) -> Tuple[Tensor, Tensor]:
    from kdops.triton import feature_imitation as kernels
    return kernels.forward(student, teacher, mask, LOSSES[loss], NORMALIZERS[normalize])


@torch.library.custom_op("kdops_triton::feature_imitation_backward", mutates_args=())
def _triton_backward(grad: Tensor, student: Tensor, teacher: Tensor, mask: Optional[Tensor], norm: Tensor,
                     loss: int) -> Tensor:
    from kdops.triton import feature_imitation as kernels
    return kernels.backward(grad, student, teacher, mask, norm, LOSSES[loss])


def _fake_forward(student, teacher, mask, loss, normalize):
    dtype = _registry.acc_dtype(student.dtype)
    return student.new_empty((), dtype=dtype), student.new_empty((), dtype=dtype)


def _fake_backward(grad, student, teacher, mask, norm, loss):
    return torch.empty_like(student, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    student, teacher, mask, loss, _ = inputs
    ctx.save_for_backward(student, teacher, mask, output[1])
    ctx.loss = loss


def _make_backward(backward_op):
    def backward(ctx, grad, _grad_norm):
        student, teacher, mask, norm = ctx.saved_tensors
        need_student, need_teacher = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_student or need_teacher):
            return None, None, None, None, None
        grad_student = backward_op(grad, student, teacher, mask, norm, ctx.loss)
        return (grad_student if need_student else None, -grad_student if need_teacher else None, None, None, None)
    return backward


for _name in ("kdops::feature_imitation", "kdops_triton::feature_imitation"):
    _registry.register(_name, _name + "_backward", _fake_forward, _fake_backward, _setup_context, _make_backward)


def _reference(student, teacher, mask, loss, normalize):
    return reference.feature_imitation(student, teacher, mask, LOSSES[loss], NORMALIZERS[normalize]), None


def feature_imitation(student: Tensor, teacher: Tensor, mask: Optional[Tensor] = None, loss: str = "mse",
                      normalize: str = "batch", *, backend: Optional[str] = None) -> Tensor:
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
    out, _ = _registry.call(which, OP, _reference, student, teacher, mask, LOSSES.index(loss),
                            NORMALIZERS.index(normalize))
    return out
