"""Inputs shared by the FGD benchmarks: ~10 boxes per image on a padded 800x1344 batch, mapped to each level."""

import torch

from common import DEVICE, FPN_LEVELS

STRIDES = {"P2": 4, "P3": 8, "P4": 16, "P5": 32, "P6": 64}
IMAGE = (800, 1344)


def image_boxes(batch, per_image=10, seed=0):
    """Boxes in padded-image pixels, COCO-like sizes (16 .. 600 px), one (K, 4) tensor per image."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batch):
        wh = 16 + torch.rand(per_image, 2, generator=g) * 584
        xy = torch.rand(per_image, 2, generator=g) * (torch.tensor([IMAGE[1], IMAGE[0]]) - wh)
        out.append(torch.cat([xy, xy + wh], dim=1).to(DEVICE))
    return out


def level_boxes(boxes, level):
    return [b / STRIDES[level] for b in boxes]


def level_size(level):
    return FPN_LEVELS[level]
