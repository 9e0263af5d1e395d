"""Hint learning with an adaptation layer (Chen et al. 2017, §3.4)."""

from typing import Optional

import torch
from torch import Tensor, nn

from kdops.ops.feature_imitation import feature_imitation


class HintLoss(nn.Module):
    """L_hint = feature_imitation(adapt(student), teacher, mask).

    Chen 2017 (§3.4) adds a 1x1 adaptation conv on the student even when the channel counts
    match, and finds it helps; `adapt=False` turns it off (the channel counts must then match).
    The adaptation layer trains with the student and is not part of the exported detector.

    Args:
        student_channels, teacher_channels: channel counts of the two feature maps.
        loss: "mse" (the paper's L2) or "l1".
        normalize: "batch", "mean" (default: scale-free, so the weight transfers across levels)
            or "mask" (mean over the masked pixels).
        adapt: use the 1x1 adaptation conv.
        weight: multiplies the loss (Chen 2017: gamma = 0.5).
        backend: kdops backend, None for automatic.
    """

    def __init__(self, student_channels: int, teacher_channels: int, loss: str = "mse", normalize: str = "mean",
                 adapt: bool = True, weight: float = 1.0, backend: Optional[str] = None):
        super().__init__()
        if not adapt and student_channels != teacher_channels:
            raise ValueError(f"HintLoss: adapt=False needs equal channel counts, got student_channels="
                             f"{student_channels} and teacher_channels={teacher_channels}")
        self.adapt = nn.Conv2d(student_channels, teacher_channels, kernel_size=1) if adapt else None
        self.loss, self.normalize, self.weight, self.backend = loss, normalize, weight, backend

    def forward(self, student: Tensor, teacher: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        if self.adapt is not None:
            student = self.adapt(student)
        if teacher.dtype != student.dtype:  # e.g. a float32 teacher and an autocast student
            teacher = teacher.to(student.dtype)
        return self.weight * feature_imitation(student, teacher, mask=mask, loss=self.loss, normalize=self.normalize,
                                               backend=self.backend)

    def extra_repr(self) -> str:
        return f"loss={self.loss!r}, normalize={self.normalize!r}, weight={self.weight}"
