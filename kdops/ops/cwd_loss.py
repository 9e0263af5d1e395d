"""kdops.cwd_loss: channel-wise distillation (Shu et al. 2021; docs/math.md §6)."""

from typing import Optional, Tuple

import torch
from torch import Tensor

from kdops import _backend, _checks, _registry
from kdops.reference import cwd_loss as reference

OP = "cwd_loss"
ROW_STATS = 6  # see csrc/include/kdops/math/cwd_loss.h
MIN_TAU = 1e-30  # below it 1/tau and tau^2 KL leave float32's range (csrc/ops/cwd_loss.h: kMinTau)


@torch.library.custom_op("kdops_triton::cwd_loss", mutates_args=())
def _triton_forward(student: Tensor, teacher: Tensor, tau: float) -> Tuple[Tensor, Tensor]:
    from kdops.triton import cwd_loss as kernels
    return kernels.forward(student, teacher, tau)


@torch.library.custom_op("kdops_triton::cwd_loss_backward", mutates_args=())
def _triton_backward(grad: Tensor, student: Tensor, teacher: Tensor, row_stats: Tensor, tau: float) -> Tensor:
    from kdops.triton import cwd_loss as kernels
    return kernels.backward(grad, student, teacher, row_stats, tau)


def _fake_forward(student, teacher, tau):
    dtype = _registry.acc_dtype(student.dtype)
    n, c = student.shape[:2]
    return student.new_empty((), dtype=dtype), student.new_empty((n * c, ROW_STATS), dtype=dtype)


def _fake_backward(grad, student, teacher, row_stats, tau):
    return torch.empty_like(student, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    student, teacher, tau = inputs
    ctx.save_for_backward(student, teacher, output[1])
    ctx.tau = tau


def _make_backward(backward_op):
    def backward(ctx, grad, _grad_stats):
        if ctx.needs_input_grad[1]:
            raise RuntimeError(f"kdops.{OP}: teacher gets no gradient; pass teacher.detach()")
        student, teacher, row_stats = ctx.saved_tensors
        grad_student = backward_op(grad, student, teacher, row_stats, ctx.tau) if ctx.needs_input_grad[0] else None
        return grad_student, None, None
    return backward


for _name in ("kdops::cwd_loss", "kdops_triton::cwd_loss"):
    _registry.register(_name, _name + "_backward", _fake_forward, _fake_backward, _setup_context, _make_backward)


def _reference(student, teacher, tau):
    return reference.cwd_loss(student, teacher, tau), None


def cwd_loss(student: Tensor, teacher: Tensor, tau: float = 1.0, *, backend: Optional[str] = None) -> Tensor:
    """Channel-wise distillation: each (n, c) channel's spatial map becomes a distribution,
    L = tau^2 / (N*C) * sum_{n,c} KL(softmax_hw(T[n,c] / tau) || softmax_hw(S[n,c] / tau)).

    Args:
        student, teacher: (N, C, H, W) features of the same shape, dtype and device, H*W >= 1
            (the student already adapted to the teacher's channels). The teacher gets no gradient:
            it must not require grad.
        tau: temperature, a finite number >= 1e-30 (the CWD paper uses 1 for detection, 4 for
            segmentation). Any large tau is exact: the loss tends to half the variance of S - T per row.
        backend: None (automatic), "reference", "cpu", "cuda" or "triton".

    Returns:
        0-dim loss, float32 (float64 for float64 inputs); 0 for an empty batch.
    """
    _checks.feature(student, OP, "student")
    _checks.tensor(teacher, OP, "teacher")
    _checks.same_layout(student, teacher, OP, "student", "teacher")
    _checks.detached(teacher, OP, "teacher")
    if student.shape[2] * student.shape[3] == 0:
        raise ValueError(f"kdops.{OP}: student must have H*W >= 1, got shape {tuple(student.shape)}")
    tau = _checks.positive(tau, OP, "tau")
    if not MIN_TAU <= tau < float("inf"):
        raise ValueError(f"kdops.{OP}: tau must be a finite number >= {MIN_TAU} (below it 1/tau and tau^2 KL leave "
                         f"float32's range), got {tau!r}")
    which = _backend.resolve(OP, student.device, backend)
    return _registry.call(which, OP, _reference, student, teacher, tau)[0]
