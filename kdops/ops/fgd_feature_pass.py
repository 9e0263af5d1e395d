"""kdops.fgd_feature_pass: every (N, C, H, W)-sized part of one FGD level in one pass each way (docs/math.md §3-§4).

kdops.nn.FGDLoss runs it on the "cpu" and "triton" backends. The per-op kernels (fgd_focal_loss, two
gc_context calls, relation_mse) read S and T eight times forward and six times backward, and autograd
adds three student gradients (three feature-sized buffers alive at once); on a CPU that memory traffic is
most of an FGD step. There is no CUDA kernel yet: with backend "cuda" FGDLoss composes the per-op kernels.
"""

from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from kdops import _backend, _checks, _registry
from kdops.ops.fgd_focal_loss import _TEACHER_GRAD as focal_teacher_grad
from kdops.ops.fgd_focal_loss import check_args as check_focal_args
from kdops.reference import fgd_feature_pass as reference

OP = "fgd_feature_pass"
BACKENDS = ("reference", "cpu", "triton")
_TEACHER_GRAD = focal_teacher_grad.replace("fgd_focal_loss", OP)


class FeaturePass(NamedTuple):
    loss: Tensor      # alpha L_fg + beta L_bg + gamma L_att (0-dim), as kdops.fgd_focal_loss
    terms: Tensor     # the unweighted (L_fg, L_bg, L_att), (3,)
    ctx_s: Tensor     # student GcBlock context, (N, C), as kdops.gc_context
    ctx_t: Tensor     # teacher GcBlock context, (N, C)
    diff_sq: Tensor   # sum (S - T)^2, 0-dim
    diff_sum: Tensor  # sum over H, W of (S - T), (N, C)


@torch.library.custom_op("kdops_triton::fgd_feature_pass", mutates_args=())
def _triton_forward(student: Tensor, teacher: Tensor, fg: Tensor, bg: Tensor, student_gc_weight: Tensor,
                    student_gc_bias: Tensor, teacher_gc_weight: Tensor, teacher_gc_bias: Tensor, temperature: float,
                    alpha: float, beta: float, gamma: float) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                                                      Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    from kdops.triton import fgd_feature_pass as kernels
    return kernels.forward(student, teacher, fg, bg, student_gc_weight, student_gc_bias, teacher_gc_weight,
                           teacher_gc_bias, temperature, alpha, beta, gamma)


@torch.library.custom_op("kdops_triton::fgd_feature_pass_backward", mutates_args=())
def _triton_backward(grads: List[Tensor], student: Tensor, teacher: Tensor, fg: Tensor, bg: Tensor,
                     student_gc_weight: Tensor, teacher_gc_weight: Tensor, ctx_s: Tensor, ctx_t: Tensor,
                     saved: List[Tensor], alpha: float, beta: float, gamma: float) -> Tuple[Tensor, Tensor, Tensor]:
    from kdops.triton import fgd_feature_pass as kernels
    return kernels.backward(grads, student, teacher, fg, bg, student_gc_weight, teacher_gc_weight, ctx_s, ctx_t, saved,
                            alpha, beta, gamma)


def _fake_forward(student, teacher, fg, bg, weight_s, bias_s, weight_t, bias_t, temperature, alpha, beta, gamma):
    n, c, h, w = student.shape
    dtype = _registry.acc_dtype(student.dtype)
    scalar, channels, pixels = (student.new_empty(shape, dtype=dtype) for shape in ((), (n, c), (n, h, w)))
    return (scalar, student.new_empty((3,), dtype=dtype), channels, torch.empty_like(channels), torch.empty_like(scalar),
            torch.empty_like(channels), pixels, torch.empty_like(channels), torch.empty_like(pixels),
            torch.empty_like(channels), torch.empty_like(pixels), torch.empty_like(pixels))


def _fake_backward(grads, student, teacher, fg, bg, weight_s, weight_t, *args):
    return (torch.empty_like(student, memory_format=torch.contiguous_format), torch.empty_like(weight_s),
            torch.empty_like(weight_t))


def _setup_context(ctx, inputs, output):
    student, teacher, fg, bg, weight_s, _bias_s, weight_t, _bias_t, _temperature, alpha, beta, gamma = inputs
    _loss, _terms, ctx_s, ctx_t, _sq, _sum, t_spatial, t_channel, pixel_att, channel_att, probs_s, probs_t = output
    ctx.save_for_backward(student, teacher, fg, bg, weight_s, weight_t, ctx_s, ctx_t, t_spatial, pixel_att, probs_s,
                          probs_t, t_channel, channel_att)
    ctx.weights = (alpha, beta, gamma)
    ctx.mark_non_differentiable(t_spatial, t_channel, pixel_att, channel_att, probs_s, probs_t)


def _make_backward(backward_op):
    """The Python twin of csrc/autograd/fgd_feature_pass.cpp (for the Triton op)."""
    def backward(ctx, *grads):
        if ctx.needs_input_grad[1]:
            raise RuntimeError(_TEACHER_GRAD)
        saved = ctx.saved_tensors
        need = ctx.needs_input_grad
        out = [None] * 12
        for bias in (5, 7):  # a bias only shifts every logit of an image: softmax ignores it
            if need[bias]:
                out[bias] = saved[4].new_zeros(1)
        if not (need[0] or need[4] or need[6]):
            return tuple(out)
        ctx_s = saved[6]
        # An unused output arrives as None; its gradient is zero.
        like = (ctx_s.new_zeros(()), ctx_s.new_zeros(3), ctx_s, ctx_s, ctx_s.new_zeros(()), ctx_s)
        output_grads = [torch.zeros_like(z) if g is None else g.to(ctx_s.dtype) for g, z in zip(grads[:6], like)]
        grad_student, grad_ws, grad_wt = backward_op(output_grads, *saved[:8], list(saved[8:]), *ctx.weights)
        out[0] = grad_student if need[0] else None
        out[4] = grad_ws if need[4] else None
        out[6] = grad_wt if need[6] else None
        return tuple(out)
    return backward


for _name in ("kdops::" + OP, "kdops_triton::" + OP):
    _registry.register(_name, _name + "_backward", _fake_forward, _fake_backward, _setup_context, _make_backward)


def fgd_feature_pass(student: Tensor, teacher: Tensor, fg: Tensor, bg: Tensor, student_gc_weight: Tensor,
                     student_gc_bias: Optional[Tensor], teacher_gc_weight: Tensor, teacher_gc_bias: Optional[Tensor],
                     temperature: float = 0.5, alpha: float = 1e-3, beta: float = 5e-4, gamma: float = 5e-4, *,
                     backend: Optional[str] = None) -> FeaturePass:
    """One FGD level's feature work in one pass over S and T each way.

    Computes kdops.fgd_focal_loss(student, teacher, fg, bg, ...), both GcBlock contexts
    kdops.gc_context(student, student_gc_weight, student_gc_bias) and
    kdops.gc_context(teacher, teacher_gc_weight, teacher_gc_bias), and the two sums that leave the
    relation loss nothing to read: with d = delta_s - delta_t (the GcBlock outputs, (N, C)),
        sum (S + d - T)^2 / N = (diff_sq + 2 sum(d * diff_sum) + H*W sum(d^2)) / N.
    The six outputs are differentiable: gradients flow to the student and to both conv weights (the
    biases' gradients are exactly zero). The teacher must not require grad.

    Args:
        student, teacher, fg, bg, temperature, alpha, beta, gamma: as kdops.fgd_focal_loss.
        student_gc_weight, student_gc_bias, teacher_gc_weight, teacher_gc_bias: each side's GcBlock
            mask conv (C -> 1), as kdops.gc_context's weight and bias (a bias may be None).
        backend: None (automatic), "reference", "cpu" or "triton" (no "cuda" kernel yet).

    Returns:
        FeaturePass(loss, terms, ctx_s, ctx_t, diff_sq, diff_sum), float32 (float64 for float64
        features). An empty batch (N = 0) gives zeros.
    """
    fg, bg, temperature, alpha, beta, gamma = check_focal_args(OP, student, teacher, fg, bg, temperature, alpha, beta,
                                                               gamma)
    acc = _registry.acc_dtype(student.dtype)
    weight_s, bias_s = _checks.gc_conv(student_gc_weight, student_gc_bias, student, acc, OP, "student_gc_")
    weight_t, bias_t = _checks.gc_conv(teacher_gc_weight, teacher_gc_bias, student, acc, OP, "teacher_gc_")
    which = _backend.resolve(OP, student.device, backend, supported=BACKENDS)
    out = _registry.call(which, OP, reference.fgd_feature_pass, student, teacher, fg, bg, weight_s, bias_s, weight_t,
                         bias_t, temperature, alpha, beta, gamma)
    return FeaturePass(*out[:6])
