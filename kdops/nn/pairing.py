"""Which student level distils into which teacher level: by stride, by size, or in order (docs/math.md §10)."""

import math
from collections.abc import Mapping
from typing import Dict, Hashable, List, NamedTuple, Optional, Tuple

PAIR_BY = ("stride", "size", "order")
TIES = ("in_order", "first")


class Level(NamedTuple):
    """One side's feature level: its channel count, its stride in the teacher's input pixels (for
    pair_by="stride" and for the boxes of fgd and masked imitation) and its (H, W) (for pair_by="size")."""
    channels: int
    stride: Optional[float] = None
    size: Optional[Tuple[int, int]] = None


class Pair(NamedTuple):
    """One distilled pair of levels: names as selected ("layer3", "backbone:0"), the teacher level's
    stride in input pixels (None when it was not needed), the loss kind and its options."""
    student: str
    teacher: str
    stride: Optional[float]
    kind: str
    options: dict


def pair_levels(student: Mapping[str, Hashable], teacher: Mapping[str, Hashable],
                tie: str = "in_order") -> List[Tuple[str, str]]:
    """(student level, teacher level) of equal keys (strides or sizes), in the student's order; student
    levels without a teacher level of their key are left out. On a tie, "in_order" pairs the k-th
    student level of a key with the k-th teacher level of it (or its last), "first" every student
    level of a key with the first teacher level of it."""
    groups: Dict[Hashable, List[str]] = {}
    for level, key in teacher.items():
        groups.setdefault(key, []).append(level)
    pairs, seen = [], {}
    for level, key in student.items():
        group = groups.get(key)
        if group:
            k = seen.get(key, 0) if tie == "in_order" else 0
            seen[key] = k + 1
            pairs.append((level, group[min(k, len(group) - 1)]))
    return pairs


def pair(student: Dict[str, Level], teacher: Dict[str, Level], pair_by: str = "stride",
         tie: str = "in_order") -> List[Tuple[str, str]]:
    """(student level, teacher level) of each distilled pair (`pair_levels` on the strides or sizes, or
    the two lists in order); ValueError when no level pairs."""
    if pair_by == "order":
        if len(student) != len(teacher):
            raise ValueError(f"FeatureDistiller: pair_by='order' needs as many student levels as teacher levels, "
                             f"got {list(student)} and {list(teacher)}")
        return list(zip(student, teacher))
    key = (lambda lv: lv.stride) if pair_by == "stride" else (lambda lv: tuple(lv.size))
    pairs = pair_levels({n: key(lv) for n, lv in student.items()}, {n: key(lv) for n, lv in teacher.items()}, tie)
    if not pairs:
        def info(levels):
            return ", ".join(name + (f" {lv.size[0]}x{lv.size[1]}" if lv.size is not None else "")
                             + (f" stride {lv.stride:g}" if lv.stride is not None else "")
                             for name, lv in levels.items())
        raise ValueError(f"FeatureDistiller: no student level pairs with a teacher level by {pair_by}: student "
                         f"{info(student)}, teacher {info(teacher)}")
    return pairs


def stride_of(image_size, size) -> Optional[float]:
    """The stride of an (h, w) map of an (H, W) input, None when it has none."""
    (H, W), (h, w) = image_size, size
    if H % h == 0 and W % w == 0 and H // h == W // w:
        return float(H // h)
    # A ceil- (or floor-) rounded map of a power-of-two stride: 100 px at stride 8 -> 13 cells.
    s = 2.0 ** round(math.log2(H / h))
    if all(math.floor(n / s) <= m <= math.ceil(n / s) for n, m in ((H, h), (W, w))):
        return s
    return None
