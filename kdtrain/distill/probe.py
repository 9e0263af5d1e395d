"""Channels and strides of a backbone's levels, from one small forward pass."""

from __future__ import annotations

from collections import OrderedDict

import torch

from kdtrain.distill.levels import level_strides


@torch.no_grad()
def probe_levels(backbone: torch.nn.Module, size: int = 256) -> tuple["OrderedDict[str, int]", "OrderedDict[str, int]"]:
    """(channels per level, stride per level). 256 px keeps stride-128 maps at 2 cells.

    A 1-cell map does not tell stride 256 from 512 (SSDlite's extra levels), so the probe
    doubles its size until the coarsest map has 2 cells (at most 2048 px).
    """
    was_training = backbone.training
    backbone.eval()  # do not disturb BatchNorm running statistics
    try:
        param = next(backbone.parameters())
        while True:
            feats = backbone(torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype))
            if isinstance(feats, torch.Tensor):
                feats = OrderedDict([("0", feats)])
            if min(int(v.shape[-2]) for v in feats.values()) >= 2 or size >= 2048:
                break
            size *= 2
    finally:
        backbone.train(was_training)
    channels = OrderedDict((k, int(v.shape[1])) for k, v in feats.items())
    return channels, level_strides(feats, (size, size))
