"""kdops.attention_masks: the FGD spatial and channel attention masks (docs/math.md §1)."""

from typing import Optional

import torch
from torch import Tensor

from kdops import _backend, _checks, _registry
from kdops._registry import acc_empty
from kdops.reference import attention_masks as reference

OP = "attention_masks"


def _backward(b):
    # An unused output arrives as None; its gradient is zero.
    grad_spatial = torch.zeros_like(b.saved.spatial) if b.grads.spatial is None else b.grads.spatial
    grad_channel = torch.zeros_like(b.saved.channel) if b.grads.channel is None else b.grads.channel
    return {"feat": b.run(grad_spatial=grad_spatial, grad_channel=grad_channel)}


OP_SPEC = _registry.define(_registry.Op(
    OP, "(Tensor feat, float temperature) -> (Tensor spatial, Tensor channel)",
    fake=lambda a: (acc_empty(a.feat, a.feat.shape[0], *a.feat.shape[2:]), acc_empty(a.feat, *a.feat.shape[:2])),
    reference=reference.attention_masks,
    backward_schema="(Tensor grad_spatial, Tensor grad_channel, Tensor feat, Tensor spatial, Tensor channel, "
                    "float temperature) -> Tensor",
    saved=("feat", "spatial", "channel"), backward=_backward,
    fake_backward=lambda a: torch.empty_like(a.feat, memory_format=torch.contiguous_format)))


def attention_masks(feat: Tensor, *, temperature: float = 0.5, backend: Optional[str] = None):
    """FGD attention masks of a feature map, from one read of it.

    spatial[n,h,w] = H*W * softmax_hw(mean_c |F| / temperature),
    channel[n,c] = C * softmax_c(mean_hw |F| / temperature).

    Args:
        feat: (N, C, H, W) float16/bfloat16/float32/float64 features; C >= 1 and H*W >= 1.
        temperature: softmax temperature (> 0). FGD uses 0.5 (0.8 for FCOS).
        backend: None (automatic), "reference", "cpu", "cuda" or "triton".

    Returns:
        (spatial (N, H, W), channel (N, C)), float32 (float64 for float64 input), differentiable
        with respect to feat. An empty batch (N = 0) returns empty masks.
    """
    _checks.feature(feat, OP, "feat")
    temperature = _checks.temperature(temperature, OP)
    if feat.shape[1] == 0 or feat.shape[2] * feat.shape[3] == 0:
        raise ValueError(f"kdops.{OP}: feat must have C >= 1 and H*W >= 1, got shape {tuple(feat.shape)}")
    which = _backend.resolve(OP, feat.device, backend)
    return OP_SPEC(which, feat=feat, temperature=temperature)
