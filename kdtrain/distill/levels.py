"""A backbone's levels (channels and strides, from one probe forward) and their pairs by stride (never by name).

MobileNetV3-FPN levels have strides 32, 32, 64; ResNet-FPN 4..64; RetinaNet and
FCOS 8..128; SSDlite 16..512 (no FPN). Level names ('0', 'p3', 'pool') mean different
things in each.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict

import torch

from kdops.nn.pairing import pair_levels as kdops_pair_levels


@dataclasses.dataclass(frozen=True)
class LevelPair:
    student: str
    teacher: str
    stride: int  # in the teacher's (input image) pixels


def level_strides(features: "OrderedDict[str, object]", padded_hw: tuple[int, int]) -> "OrderedDict[str, int]":
    """Stride of each level from the padded batch size and the map size.

    The map of a stride-s level is ceil(padded / s), so padded / size is rounded
    to the nearest power of two (160 px padded, P6 of 3 px -> 53 -> 64).
    """
    strides = OrderedDict()
    for name, feat in features.items():
        h = feat.shape[-2]
        strides[name] = 2 ** int(round(math.log2(padded_hw[0] / h)))
    return strides


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


def image_strides(student_strides: dict, student_input_scale: float = 1.0) -> "OrderedDict[str, int]":
    """The student's level strides in the teacher's (input image) pixels.

    ``student_input_scale`` is the student's input side over the teacher's: < 1 for the
    low-resolution student (Chen 2017 §4.1), where a stride-s student level at scale 0.5
    covers 2s teacher pixels; 320/160 = 2 for SSDlite's fixed 320 px input next to a 160 px
    teacher. The stride in teacher pixels is rounded to a power of two (SSDlite at 320 px by a
    teacher at 800: stride 16 covers 40 teacher pixels, paired at 32; the student map is then
    resized to the teacher's).
    """
    return OrderedDict((name, 2 ** int(round(math.log2(stride / student_input_scale))))
                       for name, stride in student_strides.items())


def pair_levels(student_strides: dict, teacher_strides: dict, student_input_scale: float = 1.0) -> list[LevelPair]:
    """Each student level with the teacher level of the same stride in image pixels (``image_strides``),
    by kdops' pairing (kdops.nn.pairing): on a tie, every student level of a stride takes the first
    teacher level of it, so two student levels of one stride both pair with that teacher level. The
    Distiller pairs once, with this, and its feature terms distil these pairs."""
    strides = image_strides(student_strides, student_input_scale)
    return [LevelPair(s, t, strides[s]) for s, t in kdops_pair_levels(strides, teacher_strides, tie="first")]
