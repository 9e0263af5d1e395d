"""kdops.gc_context: the GcBlock context pooling of FGD's global loss (docs/math.md §4)."""

from typing import Optional, Tuple

import torch
from torch import Tensor

from kdops import _backend, _checks, _registry
from kdops.reference import gc_context as reference

OP = "gc_context"


@torch.library.custom_op("kdops_triton::gc_context", mutates_args=())
def _triton_forward(feat: Tensor, weight: Tensor, bias: Tensor) -> Tuple[Tensor, Tensor]:
    from kdops.triton import gc_context as kernels
    return kernels.forward(feat, weight, bias)


@torch.library.custom_op("kdops_triton::gc_context_backward", mutates_args=())
def _triton_backward(grad_context: Tensor, feat: Tensor, weight: Tensor, context: Tensor, probs: Tensor,
                     need_feat: bool) -> Tuple[Tensor, Tensor]:
    from kdops.triton import gc_context as kernels
    return kernels.backward(grad_context, feat, weight, context, probs, need_feat)


def _fake_forward(feat, weight, bias):
    n, c, h, w = feat.shape
    dtype = _registry.acc_dtype(feat.dtype)
    return feat.new_empty((n, c), dtype=dtype), feat.new_empty((n, h, w), dtype=dtype)


def _fake_backward(grad_context, feat, weight, context, probs, need_feat):
    grad_feat = torch.empty_like(feat, memory_format=torch.contiguous_format) if need_feat else feat.new_empty(0)
    return grad_feat, torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    feat, weight, _bias = inputs
    context, probs = output
    ctx.save_for_backward(feat, weight, context, probs)
    ctx.mark_non_differentiable(probs)


def _make_backward(backward_op):
    def backward(ctx, grad_context, _grad_probs):
        feat, weight, context, probs = ctx.saved_tensors
        need_feat, need_weight, need_bias = ctx.needs_input_grad
        grad_bias = torch.zeros(1, dtype=weight.dtype, device=weight.device) if need_bias else None
        if grad_context is None or not (need_feat or need_weight):
            return None, (torch.zeros_like(weight) if need_weight and grad_context is None else None), grad_bias
        grad_feat, grad_weight = backward_op(grad_context.to(context.dtype), feat, weight, context, probs, need_feat)
        # The bias only shifts every logit of an image: softmax ignores it, so its gradient is exactly zero.
        return (grad_feat if need_feat else None), (grad_weight if need_weight else None), grad_bias
    return backward


for _name in ("kdops::gc_context", "kdops_triton::gc_context"):
    _registry.register(_name, _name + "_backward", _fake_forward, _fake_backward, _setup_context, _make_backward)


def gc_context(feat: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *,
               backend: Optional[str] = None) -> Tensor:
    """GcBlock context: context[n, c] = sum_j softmax_j(w . F[n, :, j] + b) * F[n, c, j] (docs/math.md §4).

    Args:
        feat: (N, C, H, W) float16/bfloat16/float32/float64 features, C >= 1, H*W >= 1. It may be a
            detached teacher feature: the weight still gets its gradient.
        weight: the C -> 1 1x1 conv weight, any shape with C elements (e.g. (1, C, 1, 1)).
        bias: that conv's bias, one element, or None. Its gradient is exactly zero.
        backend: None (automatic), "reference", "cpu", "cuda" or "triton".

    Returns:
        (N, C) context, float32 (float64 for float64 features), differentiable with respect to
        feat, weight and bias.
    """
    _checks.feature(feat, OP, "feat")
    n, c, h, w = feat.shape
    if c == 0 or h * w == 0:
        raise ValueError(f"kdops.{OP}: feat must have C >= 1 and H*W >= 1, got shape {tuple(feat.shape)}")
    weight, bias = _checks.gc_conv(weight, bias, feat, _registry.acc_dtype(feat.dtype), OP, "")
    which = _backend.resolve(OP, feat.device, backend)
    return _registry.call(which, OP, reference.gc_context, feat, weight, bias)[0]
