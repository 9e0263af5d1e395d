"""kdops.fgd_focal_loss: the fused FGD focal loss (docs/math.md §3)."""

from typing import Optional, Tuple

import torch
from torch import Tensor

from kdops import _backend, _checks, _registry
from kdops.reference import fgd_focal_loss as reference

OP = "fgd_focal_loss"
_TEACHER_GRAD = ("kdops.fgd_focal_loss: teacher must not require grad: the teacher's attention masks are "
                 "constants of the FGD loss (as in the official FGD code). Pass teacher.detach().")


@torch.library.custom_op("kdops_triton::fgd_focal_loss", mutates_args=())
def _triton_forward(student: Tensor, teacher: Tensor, fg: Tensor, bg: Tensor, temperature: float, alpha: float,
                    beta: float, gamma: float) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    from kdops.triton import fgd_focal_loss as kernels
    return kernels.forward(student, teacher, fg, bg, temperature, alpha, beta, gamma)


@torch.library.custom_op("kdops_triton::fgd_focal_loss_backward", mutates_args=())
def _triton_backward(grad_loss: Tensor, grad_terms: Tensor, student: Tensor, teacher: Tensor, fg: Tensor, bg: Tensor,
                     teacher_spatial: Tensor, teacher_channel: Tensor, pixel_att_grad: Tensor,
                     channel_att_grad: Tensor, alpha: float, beta: float, gamma: float) -> Tensor:
    from kdops.triton import fgd_focal_loss as kernels
    return kernels.backward(grad_loss, grad_terms, student, teacher, fg, bg, teacher_spatial, teacher_channel,
                            pixel_att_grad, channel_att_grad, alpha, beta, gamma)


def _fake_forward(student, teacher, fg, bg, temperature, alpha, beta, gamma):
    n, c, h, w = student.shape
    dtype = _registry.acc_dtype(student.dtype)
    pixels, channels = student.new_empty((n, h, w), dtype=dtype), student.new_empty((n, c), dtype=dtype)
    return (student.new_empty((), dtype=dtype), student.new_empty((3,), dtype=dtype), pixels, channels,
            torch.empty_like(pixels), torch.empty_like(channels))


def _fake_backward(grad_loss, grad_terms, student, *args):
    return torch.empty_like(student, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    student, teacher, fg, bg, _temperature, alpha, beta, gamma = inputs
    _loss, _terms, t_spatial, t_channel, pixel_att, channel_att = output
    ctx.save_for_backward(student, teacher, fg, bg, t_spatial, t_channel, pixel_att, channel_att)
    ctx.weights = (alpha, beta, gamma)
    ctx.mark_non_differentiable(t_spatial, t_channel, pixel_att, channel_att)


def _make_backward(backward_op):
    def backward(ctx, grad_loss, grad_terms, *_unused):
        if ctx.needs_input_grad[1]:
            raise RuntimeError(_TEACHER_GRAD)
        if not ctx.needs_input_grad[0]:
            return (None,) * 8
        student, teacher, fg, bg, t_spatial, t_channel, pixel_att, channel_att = ctx.saved_tensors
        dtype = t_spatial.dtype
        # An unused output arrives as None; its gradient is zero.
        grad_loss = t_spatial.new_zeros(()) if grad_loss is None else grad_loss.to(dtype)
        grad_terms = t_spatial.new_zeros(3) if grad_terms is None else grad_terms.to(dtype)
        grad = backward_op(grad_loss, grad_terms, student, teacher, fg, bg, t_spatial, t_channel, pixel_att,
                           channel_att, *ctx.weights)
        return (grad,) + (None,) * 7  # the box masks are constants
    return backward


for _name in ("kdops::fgd_focal_loss", "kdops_triton::fgd_focal_loss"):
    _registry.register(_name, _name + "_backward", _fake_forward, _fake_backward, _setup_context, _make_backward)


def check_args(op, student, teacher, fg, bg, temperature, alpha, beta, gamma):
    """Checks the focal-loss arguments of `op`; returns (fg, bg) in the accumulation dtype and the numbers."""
    _checks.feature(student, op, "student")
    _checks.tensor(teacher, op, "teacher")
    _checks.same_layout(student, teacher, op, "student", "teacher")
    if teacher.requires_grad:
        raise ValueError(_TEACHER_GRAD.replace(OP, op))
    if student.shape[1] == 0 or student.shape[2] * student.shape[3] == 0:
        raise ValueError(f"kdops.{op}: student must have C >= 1 and H*W >= 1, got shape {tuple(student.shape)}")
    acc = _registry.acc_dtype(student.dtype)
    fg = _checks.pixel_map(fg, student, op, "fg", dtype=acc)
    bg = _checks.pixel_map(bg, student, op, "bg", dtype=acc)
    temperature = _checks.positive(temperature, op, "temperature")
    alpha, beta, gamma = (_checks.number(v, op, name) for v, name in ((alpha, "alpha"), (beta, "beta"), (gamma, "gamma")))
    return fg, bg, temperature, alpha, beta, gamma


def fgd_focal_loss(student: Tensor, teacher: Tensor, fg: Tensor, bg: Tensor, temperature: float = 0.5,
                   alpha: float = 1e-3, beta: float = 5e-4, gamma: float = 5e-4, *, return_terms: bool = False,
                   backend: Optional[str] = None):
    """FGD focal loss: alpha * L_fg + beta * L_bg + gamma * L_att (FGD eq. 9-11, docs/math.md §3).

    L_fg = sum M_fg A_S^t A_C^t (S - T)^2 / N, L_bg likewise with M_bg, and
    L_att = (sum |A_C^s - A_C^t| + sum |A_S^s - A_S^t|) / N, where A^t / A^s are the teacher's / the
    student's attention masks (kdops.attention_masks). Fused: no (N, C, H, W) intermediate exists
    besides the gradient.

    Args:
        student, teacher: (N, C, H, W) features of the same shape, dtype and device (the student
            already adapted to the teacher's channels). The teacher must not require grad (its
            masks are constants of the loss): pass teacher.detach().
        fg, bg: (N, H, W) masks from kdops.box_masks (constants: they must not require grad).
        temperature: attention temperature (> 0).
        alpha, beta, gamma: weights of L_fg, L_bg, L_att. The defaults are FGD's RetinaNet values;
            kdops.nn.FGDLoss.preset has the other families'.
        return_terms: also return the unweighted (L_fg, L_bg, L_att) as a (3,) tensor (differentiable).
        backend: None (automatic), "reference", "cpu", "cuda" or "triton".

    Returns:
        The 0-dim loss, float32 (float64 for float64 features); with return_terms, (loss, terms).
        An empty batch (N = 0) gives 0.
    """
    fg, bg, temperature, alpha, beta, gamma = check_args(OP, student, teacher, fg, bg, temperature, alpha, beta, gamma)
    which = _backend.resolve(OP, student.device, backend)
    out = _registry.call(which, OP, reference.fgd_focal_loss, student, teacher, fg, bg, temperature, alpha, beta,
                         gamma)
    loss, terms = out[0], out[1]
    return (loss, terms) if return_terms else loss
