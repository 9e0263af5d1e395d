"""kdops.pkd_loss: Pearson-correlation distillation (Cao et al. 2022, mmrazor's PKDLoss; docs/math.md §6)."""

from typing import Optional, Tuple

import torch
from torch import Tensor

from kdops import _backend, _checks, _registry
from kdops.reference import pkd_loss as reference

OP = "pkd_loss"
CHANNEL_STATS = 5  # (mean_s, std_s, mean_t, std_t, D_c), see csrc/include/kdops/math/pkd_loss.h
_SWAP_SIDES = [2, 3, 0, 1, 4]  # the same statistics seen from the teacher's side


@torch.library.custom_op("kdops_triton::pkd_loss", mutates_args=())
def _triton_forward(student: Tensor, teacher: Tensor) -> Tuple[Tensor, Tensor]:
    from kdops.triton import pkd_loss as kernels
    return kernels.forward(student, teacher)


@torch.library.custom_op("kdops_triton::pkd_loss_backward", mutates_args=())
def _triton_backward(grad: Tensor, student: Tensor, teacher: Tensor, channel_stats: Tensor) -> Tensor:
    from kdops.triton import pkd_loss as kernels
    return kernels.backward(grad, student, teacher, channel_stats)


def _fake_forward(student, teacher):
    dtype = _registry.acc_dtype(student.dtype)
    return student.new_empty((), dtype=dtype), student.new_empty((student.shape[1], CHANNEL_STATS), dtype=dtype)


def _fake_backward(grad, student, teacher, channel_stats):
    return torch.empty_like(student, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    student, teacher = inputs
    ctx.save_for_backward(student, teacher, output[1])


def _make_backward(backward_op):
    def backward(ctx, grad, _grad_stats):
        student, teacher, stats = ctx.saved_tensors
        grad_student = backward_op(grad, student, teacher, stats) if ctx.needs_input_grad[0] else None
        # The loss is symmetric in S and T: the teacher's gradient is the same formula, sides swapped.
        grad_teacher = None
        if ctx.needs_input_grad[1]:
            grad_teacher = backward_op(grad, teacher, student, stats[:, _SWAP_SIDES].contiguous())
        return grad_student, grad_teacher
    return backward


for _name in ("kdops::pkd_loss", "kdops_triton::pkd_loss"):
    _registry.register(_name, _name + "_backward", _fake_forward, _fake_backward, _setup_context, _make_backward)


def _reference(student, teacher):
    return reference.pkd_loss(student, teacher), None


def pkd_loss(student: Tensor, teacher: Tensor, *, backend: Optional[str] = None) -> Tensor:
    """Pearson-correlation distillation: standardise every channel of S and of T over (N, H, W)
    (mean, unbiased std + 1e-6, as mmrazor's PKDLoss), then L = mean((S' - T')^2) / 2, which is
    1 - the mean per-channel Pearson correlation (up to the epsilon and the (M-1)/M of the std).

    Args:
        student, teacher: (N, C, H, W) features of the same shape, dtype and device
            (resize the student first if the maps differ; mmrazor's resize_stu does that).
            Both may require grad: the loss is symmetric, and each gets its gradient.
            A channel with N*H*W = 1 has no unbiased std: the loss is NaN, as in torch.std.
            Empty features (e.g. N = 0) give a zero loss and zero gradients.
        backend: None (automatic), "reference", "cpu", "cuda" or "triton".

    Returns:
        0-dim loss, float32 (float64 for float64 inputs).
    """
    _checks.feature(student, OP, "student")
    _checks.tensor(teacher, OP, "teacher")
    _checks.same_layout(student, teacher, OP, "student", "teacher")
    if student.numel() == 0:  # nothing to correlate: a zero loss (a sum of no elements), zero gradients
        dtype = _registry.acc_dtype(student.dtype)
        return student.sum(dtype=dtype) + teacher.sum(dtype=dtype)
    which = _backend.resolve(OP, student.device, backend)
    return _registry.call(which, OP, _reference, student, teacher)[0]
