"""Pearson-correlation distillation (PKD, docs/math.md §6; mmrazor's PKDLoss without resizing):
standardise each channel over (N, H, W) with its mean and unbiased std + 1e-6, then
L = mean((S' - T')^2) / 2. The loss is symmetric in S and T.
"""

import torch

from kdops._layout import acc_dtype

EPS = 1e-6


def _standardise(x):
    """(x', std) per channel. The statistics are taken of x * 2^-e with 2^e > max |x| of the channel (an exact
    scaling), so they cannot overflow for finite inputs (docs/math.md §6)."""
    c = x.shape[1]
    flat = x.transpose(0, 1).reshape(c, -1)
    amax = flat.abs().amax(dim=1, keepdim=True) if flat.shape[1] else flat.new_zeros(c, 1)
    scale = torch.ldexp(torch.ones_like(amax), -torch.frexp(amax).exponent.clamp(min=-125))
    scaled = flat * scale
    mean = scaled.mean(dim=1, keepdim=True)
    std = scaled.std(dim=1, keepdim=True)
    return (scaled - mean) / (std + EPS * scale), std / scale


def pkd_loss(student, teacher):
    dtype = acc_dtype(student.dtype)
    s, _ = _standardise(student.to(dtype))
    t, _ = _standardise(teacher.to(dtype))
    return (s - t).square().mean() / 2


def pkd_loss_backward(grad, student, teacher):
    """With x' = (x - mean) / a, a = std + eps, M = N*H*W elements per channel, E = C*M:
        dL/dx = grad / E * ((x' - y') / a - x' * (sum x'^2 - sum x'y') / ((M - 1) * std))
    (per channel sums; the mean of x' - y' is exactly zero). A constant channel (std = 0) has x' = 0."""
    dtype = acc_dtype(student.dtype)
    n, c, h, w = student.shape
    xs, std = _standardise(student.to(dtype))
    ys, _ = _standardise(teacher.to(dtype))
    m = n * h * w
    corr = ((xs * xs).sum(dim=1, keepdim=True) - (xs * ys).sum(dim=1, keepdim=True)) / ((m - 1) * std)
    corr = torch.where(std == 0, torch.zeros_like(corr), corr)
    g = grad.to(dtype) / (c * m) * ((xs - ys) / (std + EPS) - xs * corr)
    return g.reshape(c, n, h, w).transpose(0, 1).to(student.dtype)
