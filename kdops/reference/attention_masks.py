"""FGD attention masks, docs/math.md §1: A_S = H*W softmax_hw(mean_c|F| / temp),
A_C = C softmax_c(mean_hw|F| / temp)."""

import torch

from kdops._layout import to_acc


def attention_masks(feat: torch.Tensor, *, temperature: float = 0.5):
    """Returns (spatial (N, H, W), channel (N, C)) in float32 (float64 for float64 input)."""
    f = to_acc(feat).abs()
    n, c, h, w = f.shape
    m = f.mean(dim=1).reshape(n, h * w)
    k = f.mean(dim=(2, 3))
    spatial = (h * w) * torch.softmax(m / temperature, dim=1)
    channel = c * torch.softmax(k / temperature, dim=1)
    return spatial.reshape(n, h, w), channel


def attention_masks_backward(grad_spatial, grad_channel, feat, spatial, channel, temperature: float):
    """dL/dfeat = sign(F) * (g_m[n,h,w] / C + g_k[n,c] / (H*W)), with the softmax backward of the scaled masks."""
    n, c, h, w = feat.shape
    a_s, g_s = spatial.reshape(n, h * w), grad_spatial.reshape(n, h * w).to(spatial.dtype)
    a_c, g_c = channel, grad_channel.to(channel.dtype)
    g_m = a_s * (g_s - (a_s * g_s).mean(dim=1, keepdim=True)) / temperature
    g_k = a_c * (g_c - (a_c * g_c).mean(dim=1, keepdim=True)) / temperature
    coef = g_m.reshape(n, 1, h, w) / c + g_k.reshape(n, c, 1, 1) / (h * w)
    return (torch.sign(to_acc(feat)) * coef).to(feat.dtype)
