"""What one training step exposes to the distillation terms."""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from kdtrain.distill.levels import LevelPair


@dataclasses.dataclass
class RoiOutputs:
    """Both box heads on the student's own sampled proposals (rows match 1:1)."""
    student_logits: torch.Tensor
    teacher_logits: torch.Tensor
    student_regression: torch.Tensor  # (R, K*4)
    teacher_regression: torch.Tensor
    labels: torch.Tensor              # (R,), 0 = background
    regression_targets: torch.Tensor  # (R, 4) encoded deltas


@dataclasses.dataclass
class RpnPair:
    """Student and teacher RPN outputs on the M anchors the student's loss sampled (rows match 1:1)."""
    student_logits: torch.Tensor       # (M,) objectness
    teacher_logits: torch.Tensor
    student_deltas: torch.Tensor       # (M, 4) encoded box deltas
    teacher_deltas: torch.Tensor
    regression_targets: torch.Tensor   # (M, 4)
    labels: torch.Tensor               # (M,), 1 = object, 0 = background


@dataclasses.dataclass
class DistillContext:
    student_features: dict
    teacher_features: dict
    pairs: list[LevelPair]
    targets: list[dict]               # boxes in padded-batch pixels (teacher resolution)
    roi: Optional[RoiOutputs] = None
    rpn: Optional[RpnPair] = None
