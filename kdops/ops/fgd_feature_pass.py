"""kdops.fgd_feature_pass: every (N, C, H, W)-sized part of one FGD level in one pass each way (docs/math.md §3-§4).

The per-op kernels (fgd_focal_loss, two gc_context calls, relation_mse) read S and T eight times forward
and six times backward, and autograd adds three student gradients (three feature-sized buffers alive at
once); that memory traffic is most of an FGD step. Every backend has the one-pass kernel, and
kdops.nn.FGDLoss takes it on all of them.
"""

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from kdops import _backend, _checks, _registry
from kdops._layout import acc_dtype
from kdops._registry import acc_empty
from kdops.ops.fgd_focal_loss import check_args as check_focal_args
from kdops.reference import fgd_feature_pass as reference

OP = "fgd_feature_pass"


class FeaturePass(NamedTuple):
    loss: Tensor      # alpha L_fg + beta L_bg + gamma L_att (0-dim), as kdops.fgd_focal_loss
    terms: Tensor     # the unweighted (L_fg, L_bg, L_att), (3,)
    ctx_s: Tensor     # student GcBlock context, (N, C), as kdops.gc_context
    ctx_t: Tensor     # teacher GcBlock context, (N, C)
    diff_sq: Tensor   # sum (S - T)^2, 0-dim
    diff_sum: Tensor  # sum over H, W of (S - T), (N, C)


_STATS = ("teacher_spatial", "teacher_channel", "pixel_att_grad", "channel_att_grad", "probs_s", "probs_t")


def _fake(a):
    n, c, h, w = a.student.shape
    pixels, channels = (n, h, w), (n, c)
    shapes = ((), (3,), channels, channels, (), channels, pixels, channels, pixels, channels, pixels, pixels)
    return tuple(acc_empty(a.student, *shape) for shape in shapes)


def _backward(b):
    """The Python twin of csrc/autograd/fgd_feature_pass.cpp (for the Triton op)."""
    s = b.saved
    _checks.no_grad_needed("teacher" in b.need, OP, "teacher", _checks.FGD_TEACHER_WHY)
    # A bias only shifts every logit of an image: softmax ignores it, so its gradient is exactly zero.
    out = {"student_gc_bias": s.student_gc_weight.new_zeros(1), "teacher_gc_bias": s.student_gc_weight.new_zeros(1)}
    if not b.need & {"student", "student_gc_weight", "teacher_gc_weight"}:
        return out
    # An unused output arrives as None; its gradient is zero.
    like = dict(loss=s.ctx_s.new_zeros(()), terms=s.ctx_s.new_zeros(3), ctx_s=s.ctx_s, ctx_t=s.ctx_s,
                diff_sq=s.ctx_s.new_zeros(()), diff_sum=s.ctx_s)
    output_grads = {f"grad_{name}": torch.zeros_like(z) if getattr(b.grads, name) is None
                    else getattr(b.grads, name).to(s.ctx_s.dtype) for name, z in like.items()}
    out["student"], out["student_gc_weight"], out["teacher_gc_weight"] = b.run(**output_grads)
    return out


OP_SPEC = _registry.define(_registry.Op(
    OP, "(Tensor student, Tensor teacher, Tensor fg, Tensor bg, Tensor student_gc_weight, Tensor student_gc_bias, "
        "Tensor teacher_gc_weight, Tensor teacher_gc_bias, float temperature, float alpha, float beta, float gamma) -> "
        "(Tensor loss, Tensor terms, Tensor ctx_s, Tensor ctx_t, Tensor diff_sq, Tensor diff_sum, "
        "Tensor teacher_spatial, Tensor teacher_channel, Tensor pixel_att_grad, Tensor channel_att_grad, "
        "Tensor probs_s, Tensor probs_t)",
    fake=_fake, reference=reference.fgd_feature_pass,
    backward_schema="(Tensor grad_loss, Tensor grad_terms, Tensor grad_ctx_s, Tensor grad_ctx_t, Tensor grad_diff_sq, "
                    "Tensor grad_diff_sum, Tensor student, Tensor teacher, Tensor fg, Tensor bg, "
                    "Tensor student_gc_weight, Tensor teacher_gc_weight, Tensor ctx_s, Tensor ctx_t, "
                    "Tensor teacher_spatial, Tensor teacher_channel, Tensor pixel_att_grad, Tensor channel_att_grad, "
                    "Tensor probs_s, Tensor probs_t, float alpha, float beta, float gamma) -> "
                    "(Tensor grad_student, Tensor grad_student_gc_weight, Tensor grad_teacher_gc_weight)",
    saved=("student", "teacher", "fg", "bg", "student_gc_weight", "teacher_gc_weight", "ctx_s", "ctx_t") + _STATS,
    non_differentiable=_STATS, backward=_backward,
    fake_backward=lambda a: (torch.empty_like(a.student, memory_format=torch.contiguous_format),
                             torch.empty_like(a.student_gc_weight), torch.empty_like(a.teacher_gc_weight))))


def fgd_feature_pass(student: Tensor, teacher: Tensor, *, fg: Tensor, bg: Tensor, student_gc_weight: Tensor,
                     student_gc_bias: Optional[Tensor] = None, teacher_gc_weight: Tensor,
                     teacher_gc_bias: Optional[Tensor] = None, temperature: float = 0.5, alpha: float = 1e-3,
                     beta: float = 5e-4, gamma: float = 5e-4, backend: Optional[str] = None) -> FeaturePass:
    """One FGD level's feature work in one pass over S and T each way.

    Computes kdops.fgd_focal_loss(student, teacher, fg=fg, bg=bg, ...), both GcBlock contexts
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
        backend: None (automatic), "reference", "cpu", "cuda" or "triton".

    Returns:
        FeaturePass(loss, terms, ctx_s, ctx_t, diff_sq, diff_sum), float32 (float64 for float64
        features). An empty batch (N = 0) gives zeros.
    """
    a = dict(student_gc_weight=student_gc_weight, student_gc_bias=student_gc_bias,
             teacher_gc_weight=teacher_gc_weight, teacher_gc_bias=teacher_gc_bias)
    a["fg"], a["bg"], a["temperature"], a["alpha"], a["beta"], a["gamma"] = check_focal_args(
        OP, student, teacher, fg, bg, temperature, alpha, beta, gamma)
    acc = acc_dtype(student.dtype)
    for side in ("student_gc_", "teacher_gc_"):
        a[side + "weight"], a[side + "bias"] = _checks.gc_conv(a[side + "weight"], a[side + "bias"], student, acc, OP,
                                                               side)
    which = _backend.resolve(OP, student.device, backend)
    return FeaturePass(*OP_SPEC(which, student=student, teacher=teacher, **a)[:6])
