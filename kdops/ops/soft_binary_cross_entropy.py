"""kdops.soft_binary_cross_entropy: the RPN-objectness (one logit per anchor) variant of Chen 2017's
weighted soft cross-entropy, hard BCE fused (docs/math.md §7)."""

from typing import Optional, Tuple

import torch
from torch import Tensor

from kdops import _backend, _checks, _registry
from kdops.reference import soft_binary_cross_entropy as reference

OP = "soft_binary_cross_entropy"


@torch.library.custom_op("kdops_triton::soft_binary_cross_entropy", mutates_args=())
def _triton_forward(student: Tensor, teacher: Tensor, target: Optional[Tensor], pos_weight: float, neg_weight: float,
                    temperature: float, mu: float, ignore_index: int) -> Tuple[Tensor, Tensor]:
    from kdops.triton import soft_binary_cross_entropy as kernels
    return kernels.forward(student, teacher, target, pos_weight, neg_weight, temperature, mu, ignore_index)


@torch.library.custom_op("kdops_triton::soft_binary_cross_entropy_backward", mutates_args=())
def _triton_backward(grad: Tensor, student: Tensor, teacher: Tensor, target: Optional[Tensor], norm: Tensor,
                     pos_weight: float, neg_weight: float, temperature: float, mu: float, ignore_index: int) -> Tensor:
    from kdops.triton import soft_binary_cross_entropy as kernels
    return kernels.backward(grad, student, teacher, target, norm, pos_weight, neg_weight, temperature, mu,
                            ignore_index)


def _fake_forward(student, teacher, target, pos_weight, neg_weight, temperature, mu, ignore_index):
    dtype = _registry.acc_dtype(student.dtype)
    return student.new_empty((), dtype=dtype), student.new_empty((), dtype=dtype)


def _fake_backward(grad, student, teacher, target, norm, pos_weight, neg_weight, temperature, mu, ignore_index):
    return torch.empty_like(student, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    student, teacher, target, *args = inputs
    ctx.save_for_backward(student, teacher, target, output[1])
    ctx.args = tuple(args)


def _make_backward(backward_op):
    def backward(ctx, grad, _grad_norm):
        if ctx.needs_input_grad[1]:
            raise RuntimeError(f"kdops.{OP}: teacher_logits gets no gradient; pass teacher_logits.detach()")
        student, teacher, target, norm = ctx.saved_tensors
        grad_student = backward_op(grad, student, teacher, target, norm, *ctx.args) if ctx.needs_input_grad[0] else None
        return (grad_student,) + (None,) * 7
    return backward


for _name in ("kdops::soft_binary_cross_entropy", "kdops_triton::soft_binary_cross_entropy"):
    _registry.register(_name, _name + "_backward", _fake_forward, _fake_backward, _setup_context, _make_backward)


def soft_binary_cross_entropy(student_logits: Tensor, teacher_logits: Tensor, pos_weight: float = 1.0,
                              neg_weight: float = 1.5, temperature: float = 1.0, target: Optional[Tensor] = None,
                              mu: float = 0.0, ignore_index: int = -1, *, backend: Optional[str] = None) -> Tensor:
    """Weighted soft binary cross-entropy for RPN objectness (one logit per anchor, docs/math.md §7).

    With x = z_s / T and p_t = sigmoid(z_t / T), each anchor contributes
    soft = -(pos_weight * p_t * log sigmoid(x) + neg_weight * (1 - p_t) * log sigmoid(-x)),
    computed in a form that stays finite for any finite logit. With a target the hard BCE (at
    temperature 1, unweighted) is fused: mu * BCE(z_s, y) + (1 - mu) * soft. The loss is the mean
    over kept anchors (all anchors without a target; 0 if none is kept).

    Args:
        student_logits, teacher_logits: logits of any (equal) shape, e.g. (anchors,) or (N, A, H, W).
            The teacher gets no gradient: it must not require grad.
        pos_weight, neg_weight: w_1 (object) and w_0 (background); Chen 2017 weights the background
            class 1.5.
        temperature: T > 0.
        target: optional integer labels of the logits' shape: 1 object, 0 background, ignore_index
            to skip (torchvision RPN labels, as `.long()`). Another value raises on the "cpu" backend
            and gives a NaN loss on the others (no host sync).
        mu: weight of the hard loss, in [0, 1]; unused without a target.
        backend: None (automatic), "reference", "cpu", "cuda" or "triton".

    Returns:
        0-dim loss, float32 (float64 for float64 logits).
    """
    _checks.float_tensor(student_logits, OP, "student_logits")
    _checks.tensor(teacher_logits, OP, "teacher_logits")
    _checks.same_layout(student_logits, teacher_logits, OP, "student_logits", "teacher_logits")
    _checks.detached(teacher_logits, OP, "teacher_logits")
    pos_weight = _checks.number(pos_weight, OP, "pos_weight")
    neg_weight = _checks.number(neg_weight, OP, "neg_weight")
    temperature = _checks.positive(temperature, OP, "temperature")
    mu = _checks.unit_interval(mu, OP, "mu")
    ignore_index = _checks.integer(ignore_index, OP, "ignore_index")
    if target is not None:
        target = _checks.labels(target, student_logits.shape, student_logits, OP, "target")
    which = _backend.resolve(OP, student_logits.device, backend)
    out = _registry.call(which, OP, reference.soft_binary_cross_entropy, student_logits, teacher_logits, target,
                         pos_weight, neg_weight, temperature, mu, ignore_index)
    return out[0]
