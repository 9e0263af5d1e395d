"""Pair student and teacher feature levels by stride (never by name).

MobileNetV3-FPN levels have strides 32, 32, 64; ResNet-FPN 4..64; RetinaNet and
FCOS 8..128; SSDlite 16..512 (no FPN). Level names ('0', 'p3', 'pool') mean different
things in each.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict


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


def pair_levels(student_strides: dict, teacher_strides: dict, student_input_scale: float = 1.0) -> list[LevelPair]:
    """Each student level with the teacher level of the same stride in image pixels.

    ``student_input_scale`` is the student's input side over the teacher's: < 1 for the
    low-resolution student (Chen 2017 §4.1), where a stride-s student level at scale 0.5
    covers 2s teacher pixels; 320/160 = 2 for SSDlite's fixed 320 px input next to a 160 px
    teacher. The stride in teacher pixels is rounded to a power of two (SSDlite at 320 px by a
    teacher at 800: stride 16 covers 40 teacher pixels, paired at 32; the student map is then
    resized to the teacher's). Two student levels of one stride both pair with that teacher level.
    """
    by_stride = {}
    for name, stride in teacher_strides.items():
        by_stride.setdefault(stride, name)  # first (finest-named) level wins on a tie
    pairs = []
    for name, stride in student_strides.items():
        image_stride = 2 ** int(round(math.log2(stride / student_input_scale)))
        if image_stride in by_stride:
            pairs.append(LevelPair(name, by_stride[image_stride], image_stride))
    return pairs
