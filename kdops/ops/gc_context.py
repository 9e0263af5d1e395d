"""kdops.gc_context: the GcBlock context pooling of FGD's global loss (docs/math.md §4)."""

from typing import Optional

import torch
from torch import Tensor

from kdops import _backend, _checks, _registry
from kdops._layout import acc_dtype
from kdops._registry import acc_empty
from kdops.reference import gc_context as reference

OP = "gc_context"


def _backward(b):
    s = b.saved
    # The bias only shifts every logit of an image: softmax ignores it, so its gradient is exactly zero.
    out = {"bias": torch.zeros(1, dtype=s.weight.dtype, device=s.weight.device)}
    if b.grads.context is None:
        return {**out, "weight": torch.zeros_like(s.weight)}
    if b.need & {"feat", "weight"}:
        out["feat"], out["weight"] = b.run(grad_context=b.grads.context.to(s.context.dtype),
                                           need_feat="feat" in b.need)
    return out


OP_SPEC = _registry.define(_registry.Op(
    OP, "(Tensor feat, Tensor weight, Tensor bias) -> (Tensor context, Tensor probs)",
    fake=lambda a: (acc_empty(a.feat, *a.feat.shape[:2]), acc_empty(a.feat, a.feat.shape[0], *a.feat.shape[2:])),
    reference=reference.gc_context,
    backward_schema="(Tensor grad_context, Tensor feat, Tensor weight, Tensor context, Tensor probs, bool need_feat) "
                    "-> (Tensor grad_feat, Tensor grad_weight)",
    saved=("feat", "weight", "context", "probs"), non_differentiable=("probs",), backward=_backward,
    fake_backward=lambda a: (torch.empty_like(a.feat, memory_format=torch.contiguous_format) if a.need_feat
                             else a.feat.new_empty(0), torch.empty_like(a.weight))))


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
    weight, bias = _checks.gc_conv(weight, bias, feat, acc_dtype(feat.dtype), OP, "")
    which = _backend.resolve(OP, feat.device, backend)
    return OP_SPEC(which, feat=feat, weight=weight, bias=bias)[0]
