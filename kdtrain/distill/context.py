"""What one training step exposes to the distillation terms."""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from kdtrain.distill.levels import LevelPair


def positive_rows(labels: torch.Tensor, known=None):
    """The rows whose label is an object (> 0), as an index or a slice: ``known`` when the caller has it,
    else found on the device, which waits for it once (the count decides the result's size)."""
    return known if known is not None else torch.where(labels > 0)[0]


@dataclasses.dataclass
class RoiOutputs:
    """Both box heads on the student's own sampled proposals (rows match 1:1)."""
    student_logits: torch.Tensor
    teacher_logits: torch.Tensor
    student_regression: torch.Tensor  # (R, K*4)
    teacher_regression: torch.Tensor
    labels: torch.Tensor              # (R,), 0 = background
    regression_targets: torch.Tensor  # (R, 4) encoded deltas; only the positive rows' are meaningful
    positive: object = None           # index or slice of the rows with label > 0; None: found from labels


@dataclasses.dataclass
class RpnPair:
    """Student and teacher RPN outputs on the M anchors the student's loss sampled (rows match 1:1)."""
    student_logits: torch.Tensor       # (M,) objectness
    teacher_logits: torch.Tensor
    student_deltas: torch.Tensor       # (M, 4) encoded box deltas
    teacher_deltas: torch.Tensor
    regression_targets: torch.Tensor   # (M, 4); only the positive rows' are meaningful
    labels: torch.Tensor               # (M,), 1 = object, 0 = background
    positive: object = None            # index or slice of the rows with label 1; None: found from labels


@dataclasses.dataclass
class DistillContext:
    student_features: dict
    teacher_features: dict
    pairs: list[LevelPair]
    targets: list[dict]               # boxes in padded-batch pixels (teacher resolution)
    roi: Optional[RoiOutputs] = None
    rpn: Optional[RpnPair] = None

    def with_student_tensors(self, fn) -> "DistillContext":
        """A copy whose student tensors (the ones a term's gradient flows into) are ``fn`` of them."""
        roi = rpn = None
        if self.roi is not None:
            roi = dataclasses.replace(self.roi, student_logits=fn(self.roi.student_logits),
                                      student_regression=fn(self.roi.student_regression))
        if self.rpn is not None:
            rpn = dataclasses.replace(self.rpn, student_logits=fn(self.rpn.student_logits),
                                      student_deltas=fn(self.rpn.student_deltas))
        return dataclasses.replace(self, student_features={k: fn(v) for k, v in self.student_features.items()},
                                   roi=roi, rpn=rpn)
