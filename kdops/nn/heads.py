"""Head distillation losses of Chen et al. 2017 (§3.2-3.3) as modules with the paper's defaults."""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdops._layout import acc_dtype
from kdops.ops.bounded_regression import bounded_regression
from kdops.ops.soft_binary_cross_entropy import soft_binary_cross_entropy
from kdops.ops.soft_cross_entropy import soft_cross_entropy
from kdops.reference._common import without_weightless


class DistillCrossEntropy(nn.Module):
    """L_cls = mu * CE(z_s, y) + (1 - mu) * L_soft for the RCN classifier (Chen 2017, eq. 2-3).

    L_soft weights the background class (class 0, torchvision convention) by `background_weight`
    (paper: w_0 = 1.5) and every other class by 1, or by `class_weight` when given.

    Args:
        background_weight: w_0 (paper: 1.5); ignored when class_weight is given.
        temperature: T (paper: 1, found best for detection).
        mu: weight of the hard CE when a target is passed (the paper does not report its value;
            0.5 weighs both terms equally). Without a target the loss is L_soft alone.
        ignore_index: label of proposals to skip (mean over the rest).
        class_weight: optional full (classes,) weight vector.
        backend: kdops backend, None for automatic.
    """

    def __init__(self, background_weight: float = 1.5, temperature: float = 1.0, mu: float = 0.5,
                 ignore_index: int = -1, class_weight: Optional[Tensor] = None, backend: Optional[str] = None):
        super().__init__()
        self._cache = {}  # (classes, device, dtype) -> weight vector, so forward allocates nothing
        self.background_weight, self.temperature, self.mu = background_weight, temperature, mu
        self.ignore_index, self.backend = ignore_index, backend
        self.register_buffer("class_weight", None if class_weight is None else class_weight.detach().clone())

    @property
    def background_weight(self) -> float:
        return self._background_weight

    @background_weight.setter
    def background_weight(self, value: float) -> None:
        # The cached weight vectors hold the old w_0: drop them (rebuilt once, on the next call).
        self._background_weight = float(value)
        self._cache.clear()

    def weights(self, classes: int, like: Tensor) -> Tensor:
        dtype = acc_dtype(like.dtype)
        if self.class_weight is not None:
            return self.class_weight.to(like.device, dtype)
        key = (classes, like.device, dtype)
        if key not in self._cache:
            w = torch.ones(classes, dtype=dtype, device=like.device)
            w[0] = self.background_weight
            self._cache[key] = w
        return self._cache[key]

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, target: Optional[Tensor] = None) -> Tensor:
        teacher_logits = teacher_logits.detach().to(student_logits.dtype)
        w = self.weights(student_logits.shape[-1], student_logits)
        return soft_cross_entropy(student_logits, teacher_logits, class_weight=w, target=target,
                                  temperature=self.temperature, mu=self.mu, ignore_index=self.ignore_index,
                                  backend=self.backend)

    def extra_repr(self) -> str:
        return f"background_weight={self.background_weight}, temperature={self.temperature}, mu={self.mu}"


class DistillBinaryCrossEntropy(nn.Module):
    """The RPN objectness version of DistillCrossEntropy (one logit per anchor).

    Args:
        pos_weight, neg_weight: weights of the object and background terms (paper: background 1.5).
        temperature, mu, ignore_index, backend: as in DistillCrossEntropy.
    """

    def __init__(self, pos_weight: float = 1.0, neg_weight: float = 1.5, temperature: float = 1.0, mu: float = 0.5,
                 ignore_index: int = -1, backend: Optional[str] = None):
        super().__init__()
        self.pos_weight, self.neg_weight, self.temperature, self.mu = pos_weight, neg_weight, temperature, mu
        self.ignore_index, self.backend = ignore_index, backend

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, target: Optional[Tensor] = None) -> Tensor:
        teacher_logits = teacher_logits.detach().to(student_logits.dtype)
        return soft_binary_cross_entropy(student_logits, teacher_logits, target=target, pos_weight=self.pos_weight,
                                         neg_weight=self.neg_weight, temperature=self.temperature, mu=self.mu,
                                         ignore_index=self.ignore_index, backend=self.backend)

    def extra_repr(self) -> str:
        return f"pos_weight={self.pos_weight}, neg_weight={self.neg_weight}, temperature={self.temperature}, mu={self.mu}"


class BoundedRegressionLoss(nn.Module):
    """nu * L_b, the teacher-bounded L2 of Chen 2017 (eq. 4; paper: nu = 0.5, margin m = 0).

    The paper's full regression loss is smoothL1(r_s, y) + nu * L_b. A detector usually computes the
    smooth-L1 term itself; `with_smooth_l1=True` adds it here instead, summed over each row's D values
    and averaged over the same rows as L_b (beta = 1: Fast R-CNN's smooth L1).

    forward(student_reg, teacher_reg, target, weight=None): (..., D) tensors, weight per row
    (e.g. 1 for positive proposals); see kdops.bounded_regression.
    """

    def __init__(self, nu: float = 0.5, margin: float = 0.0, with_smooth_l1: bool = False, beta: float = 1.0,
                 backend: Optional[str] = None):
        super().__init__()
        self.nu, self.margin, self.with_smooth_l1, self.beta, self.backend = nu, margin, with_smooth_l1, beta, backend

    def forward(self, student_reg: Tensor, teacher_reg: Tensor, target: Tensor,
                weight: Optional[Tensor] = None) -> Tensor:
        teacher_reg = teacher_reg.detach().to(student_reg.dtype)
        target = target.detach().to(student_reg.dtype)
        loss = self.nu * bounded_regression(student_reg, teacher_reg, target=target, weight=weight, margin=self.margin,
                                            backend=self.backend)
        if self.with_smooth_l1:
            if weight is None:
                per_row = F.smooth_l1_loss(student_reg, target, beta=self.beta, reduction="none").sum(-1)
                loss = loss + per_row.sum() / max(per_row.numel(), 1)  # 0 rows: 0, as the op (mean() is 0/0)
            else:  # a row of weight 0 adds exactly 0, whatever it holds (docs/math.md §0)
                count = (weight > 0).sum().clamp(min=1)
                kept = weight[..., None]
                per_row = F.smooth_l1_loss(without_weightless(student_reg, kept), without_weightless(target, kept),
                                           beta=self.beta, reduction="none").sum(-1)
                loss = loss + (per_row * weight).sum() / count
        return loss

    def extra_repr(self) -> str:
        return f"nu={self.nu}, margin={self.margin}, with_smooth_l1={self.with_smooth_l1}"
