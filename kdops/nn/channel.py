"""Channel-wise (CWD) and Pearson (PKD) feature distillation losses as modules."""

from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from kdops.ops.cwd_loss import cwd_loss
from kdops.ops.pkd_loss import pkd_loss


class CWDLoss(nn.Module):
    """loss_weight * CWD(student, teacher) (Shu et al. 2021): per-channel spatial softmax + KL.

    Args:
        tau: temperature (the paper: 1 for detection, 4 for segmentation).
        loss_weight: multiplies the loss.
        backend: kdops backend, None for automatic.
    """

    def __init__(self, tau: float = 1.0, loss_weight: float = 1.0, backend: Optional[str] = None):
        super().__init__()
        self.tau, self.loss_weight, self.backend = tau, loss_weight, backend

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        teacher = teacher.detach().to(student.dtype)
        return self.loss_weight * cwd_loss(student, teacher, tau=self.tau, backend=self.backend)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, loss_weight={self.loss_weight}"


class PKDLoss(nn.Module):
    """loss_weight * PKD(student, teacher) (Cao et al. 2022; mmrazor's PKDLoss).

    Maps of different sizes are first resized bilinearly, the student to the teacher's size
    (resize_student=True, mmrazor's default) or the teacher to the student's. The teacher is
    detached (set detach_teacher=False to let it receive its gradient too).
    """

    def __init__(self, loss_weight: float = 1.0, resize_student: bool = True, detach_teacher: bool = True,
                 backend: Optional[str] = None):
        super().__init__()
        self.loss_weight, self.resize_student, self.detach_teacher = loss_weight, resize_student, detach_teacher
        self.backend = backend

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        if self.detach_teacher:
            teacher = teacher.detach()
        teacher = teacher.to(student.dtype)
        if student.shape[2:] != teacher.shape[2:]:
            if self.resize_student:
                student = F.interpolate(student, size=teacher.shape[2:], mode="bilinear")
            else:
                teacher = F.interpolate(teacher, size=student.shape[2:], mode="bilinear")
        return self.loss_weight * pkd_loss(student, teacher, backend=self.backend)

    def extra_repr(self) -> str:
        return f"loss_weight={self.loss_weight}, resize_student={self.resize_student}"
