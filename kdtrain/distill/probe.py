"""Channels and strides of a backbone's levels, from one small forward pass."""

from __future__ import annotations

from collections import OrderedDict

import torch

from kdtrain.distill.levels import level_strides


@torch.no_grad()
def probe_levels(backbone: torch.nn.Module, size: int = 256) -> tuple["OrderedDict[str, int]", "OrderedDict[str, int]"]:
    """(channels per level, stride per level). 256 px keeps stride-128 maps at 2 cells."""
    was_training = backbone.training
    backbone.eval()  # do not disturb BatchNorm running statistics
    try:
        param = next(backbone.parameters())
        feats = backbone(torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype))
    finally:
        backbone.train(was_training)
    if isinstance(feats, torch.Tensor):
        feats = OrderedDict([("0", feats)])
    channels = OrderedDict((k, int(v.shape[1])) for k, v in feats.items())
    return channels, level_strides(feats, (size, size))
