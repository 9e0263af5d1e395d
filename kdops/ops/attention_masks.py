"""kdops.attention_masks: the FGD spatial and channel attention masks (docs/math.md §1)."""

from typing import Optional, Tuple

import torch
from torch import Tensor

from kdops import _backend, _checks, _registry
from kdops.reference import attention_masks as reference

OP = "attention_masks"


@torch.library.custom_op("kdops_triton::attention_masks", mutates_args=())
def _triton_forward(feat: Tensor, temperature: float) -> Tuple[Tensor, Tensor]:
    from kdops.triton import attention_masks as kernels
    return kernels.forward(feat, temperature)


@torch.library.custom_op("kdops_triton::attention_masks_backward", mutates_args=())
def _triton_backward(grad_spatial: Tensor, grad_channel: Tensor, feat: Tensor, spatial: Tensor, channel: Tensor,
                     temperature: float) -> Tensor:
    from kdops.triton import attention_masks as kernels
    return kernels.backward(grad_spatial, grad_channel, feat, spatial, channel, temperature)


def _fake_forward(feat, temperature):
    n, c, h, w = feat.shape
    dtype = _registry.acc_dtype(feat.dtype)
    return feat.new_empty((n, h, w), dtype=dtype), feat.new_empty((n, c), dtype=dtype)


def _fake_backward(grad_spatial, grad_channel, feat, spatial, channel, temperature):
    return torch.empty_like(feat, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    feat, temperature = inputs
    ctx.save_for_backward(feat, *output)
    ctx.temperature = temperature


def _make_backward(backward_op):
    def backward(ctx, grad_spatial, grad_channel):
        feat, spatial, channel = ctx.saved_tensors
        # An unused output arrives as None; its gradient is zero.
        grad_spatial = torch.zeros_like(spatial) if grad_spatial is None else grad_spatial
        grad_channel = torch.zeros_like(channel) if grad_channel is None else grad_channel
        return backward_op(grad_spatial, grad_channel, feat, spatial, channel, ctx.temperature), None
    return backward


for _name in ("kdops::attention_masks", "kdops_triton::attention_masks"):
    _registry.register(_name, _name + "_backward", _fake_forward, _fake_backward, _setup_context, _make_backward)


def attention_masks(feat: Tensor, temperature: float = 0.5, *, backend: Optional[str] = None):
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
    temperature = _checks.positive(temperature, OP, "temperature")
    if feat.shape[1] == 0 or feat.shape[2] * feat.shape[3] == 0:
        raise ValueError(f"kdops.{OP}: feat must have C >= 1 and H*W >= 1, got shape {tuple(feat.shape)}")
    which = _backend.resolve(OP, feat.device, backend)
    return _registry.call(which, OP, reference.attention_masks, feat, temperature)
