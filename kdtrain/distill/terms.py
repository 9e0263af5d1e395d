"""Distillation loss terms, composed from the kdops.nn modules.

A term owns its trainable pieces (one kdops.nn module per paired level: adaptation layers,
GcBlocks) and returns raw, unweighted losses keyed by name; the Distiller weights and logs them.
What each term does next to its paper and official code: docs/recipes.md.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from kdops import box_masks
from kdops.nn import (BoundedRegressionLoss, CWDLoss, DistillBinaryCrossEntropy, DistillCrossEntropy, FGDLoss,
                      HintLoss, PKDLoss)
from kdtrain.distill.boxes import boxes_on_level
from kdtrain.distill.context import DistillContext
from kdtrain.distill.levels import LevelPair
from kdtrain.errors import UsageError


def _pair_key(pair: LevelPair) -> str:
    return f"s{pair.student}_t{pair.teacher}"  # ModuleDict keys cannot contain '.'


def matched_student_feature(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Resize the student's map to the teacher's (bilinear) when they differ.

    Happens for a low-resolution student (Chen 2017 §4.1) and when ceil-rounded coarse levels
    differ by a cell. Resizing before a 1x1 adaptation conv equals resizing after it: the conv is
    affine per pixel and each bilinear output is a convex combination of input pixels.
    """
    if student.shape[-2:] != teacher.shape[-2:]:
        student = F.interpolate(student, size=teacher.shape[-2:], mode="bilinear", align_corners=False)
    return student


class PairedFeatureTerm(nn.Module):
    """Base for terms applied on each (student level, teacher level) pair.

    The pair losses are summed (``level_reduction = "sum"``), as the official FGD, CWD and PKD
    configs add one loss per FPN level; ImitationTerm averages them (docs/recipes.md).
    """

    name = ""
    level_reduction = "sum"

    def __init__(self, pairs: list[LevelPair], student_channels: dict, teacher_channels: dict):
        super().__init__()
        if not pairs:
            raise UsageError(f"{self.name}: no student level shares a stride with a teacher level")
        self.pairs = list(pairs)
        self.per_pair = nn.ModuleDict(
            {_pair_key(p): self.make_pair_module(student_channels[p.student], teacher_channels[p.teacher])
             for p in self.pairs}
        )

    def make_pair_module(self, s_channels: int, t_channels: int) -> nn.Module:
        raise NotImplementedError

    def pair_loss(self, module, student, teacher, pair: LevelPair, ctx: DistillContext) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, ctx: DistillContext) -> dict:
        total = sum(self.pair_loss(self.per_pair[_pair_key(p)], ctx.student_features[p.student],
                                   ctx.teacher_features[p.teacher], p, ctx) for p in self.pairs)
        return {self.name: total / len(self.pairs) if self.level_reduction == "mean" else total}


class ImitationTerm(PairedFeatureTerm):
    """Hint learning with a 1x1 adaptation (Chen 2017 §3.4), optional box mask (docs/math.md §5).

    Averaged over levels: Chen 2017 imitates one hint layer, so the term keeps one layer's weight.
    """

    name = "imitation"
    level_reduction = "mean"

    def __init__(self, pairs, student_channels, teacher_channels, loss="mse", normalize="mean", mask="none"):
        if mask not in ("none", "boxes"):
            raise ValueError(f"imitation mask must be 'none' or 'boxes', got {mask!r}")
        self.loss, self.normalize, self.mask = loss, normalize, mask
        super().__init__(pairs, student_channels, teacher_channels)

    def make_pair_module(self, s_channels, t_channels):
        return HintLoss(s_channels, t_channels, loss=self.loss, normalize=self.normalize, adapt=True)

    def pair_loss(self, module, student, teacher, pair, ctx):
        mask = None
        if self.mask == "boxes":
            # 0/1 mask of the (ground-truth or pseudo-label) boxes on this level.
            fg, _bg = box_masks(boxes_on_level(ctx.targets, pair.stride), tuple(teacher.shape[-2:]))
            mask = (fg > 0).to(teacher.dtype)
        return module(matched_student_feature(student, teacher), teacher, mask=mask)


def fgd_preset(family: str) -> str:
    """The FGDLoss preset of a student family. FGD publishes no SSD config: SSD takes the one-stage
    anchor-based one (RetinaNet's)."""
    return "retinanet" if family == "ssd" else family


class FGDTerm(PairedFeatureTerm):
    """Focal and global distillation (Yang 2022) with kdops' per-family preset weights.

    After each call ``last_terms`` holds the weighted parts summed over levels (detached tensors,
    no host sync): fgd_fg, fgd_bg, fgd_attention, fgd_global; they add up to the ``fgd`` loss.
    """

    name = "fgd"

    def __init__(self, pairs, student_channels, teacher_channels, family="two_stage"):
        self.family = fgd_preset(family)
        super().__init__(pairs, student_channels, teacher_channels)
        self.last_terms: dict = {}

    def make_pair_module(self, s_channels, t_channels):
        return FGDLoss.preset(self.family, s_channels, t_channels)

    def pair_loss(self, module, student, teacher, pair, ctx):
        loss = module(matched_student_feature(student, teacher), teacher, boxes_on_level(ctx.targets, pair.stride))
        for k, v in module.last_terms.items():
            self.last_terms[f"fgd_{k}"] = self.last_terms.get(f"fgd_{k}", 0) + v
        return loss

    def forward(self, ctx):
        self.last_terms = {}
        return super().forward(ctx)


class AdaptedLoss(nn.Module):
    """``loss(adapt(student), teacher)``; the 1x1 ``adapt`` conv exists only when the channel counts
    differ (mmrazor's CWD and PKD detection configs distil equal-width FPNs without one)."""

    def __init__(self, loss: nn.Module, s_channels: int, t_channels: int):
        super().__init__()
        self.adapt = nn.Conv2d(s_channels, t_channels, kernel_size=1) if s_channels != t_channels else None
        self.loss = loss

    def forward(self, student, teacher):
        return self.loss(student if self.adapt is None else self.adapt(student), teacher)


class CWDTerm(PairedFeatureTerm):
    """Channel-wise distillation, kdops.nn.CWDLoss (docs/math.md §6)."""

    name = "cwd"

    def __init__(self, pairs, student_channels, teacher_channels, tau=1.0):
        self.tau = tau
        super().__init__(pairs, student_channels, teacher_channels)

    def make_pair_module(self, s_channels, t_channels):
        return AdaptedLoss(CWDLoss(tau=self.tau), s_channels, t_channels)

    def pair_loss(self, module, student, teacher, pair, ctx):
        return module(matched_student_feature(student, teacher), teacher)


class PKDTerm(PairedFeatureTerm):
    """Pearson-correlation feature distillation, kdops.nn.PKDLoss, which resizes the student itself."""

    name = "pkd"

    def make_pair_module(self, s_channels, t_channels):
        return AdaptedLoss(PKDLoss(), s_channels, t_channels)

    def pair_loss(self, module, student, teacher, pair, ctx):
        return module(student, teacher)


def bounded_over_rows(loss: BoundedRegressionLoss, student, teacher, target, positive) -> torch.Tensor:
    """``loss`` summed over the positive rows and divided by all rows.

    Chen 2017 eq. 1 averages L_reg over all N sampled rows, zero for the negatives, as
    torchvision's own box losses do; kdops averages over the weighted rows, hence the factor.
    """
    weight = positive.to(torch.float32)
    return loss(student, teacher, target, weight=weight) * (weight.sum() / max(weight.shape[0], 1))


class ChenRcnTerm(nn.Module):
    """Chen 2017 RCN distillation: weighted soft CE + teacher-bounded regression."""

    name = "chen_rcn"

    def __init__(self, background_weight=1.5, temperature=1.0, margin=0.0):
        super().__init__()
        # No target: L_soft alone; torchvision computes the hard CE and the smooth L1 itself.
        self.soft = DistillCrossEntropy(background_weight=background_weight, temperature=temperature)
        self.bounded = BoundedRegressionLoss(nu=1.0, margin=margin)  # nu is the chen_rcn_reg weight

    def forward(self, ctx: DistillContext) -> dict:
        roi = ctx.roi
        rows = roi.labels.shape[0]
        index = torch.arange(rows, device=roi.labels.device)

        def gt_class_deltas(reg):  # (R, K*4) -> (R, 4) of each row's label (the background row for negatives)
            return reg.reshape(rows, reg.shape[-1] // 4, 4)[index, roi.labels]

        bounded = bounded_over_rows(self.bounded, gt_class_deltas(roi.student_regression),
                                    gt_class_deltas(roi.teacher_regression), roi.regression_targets, roi.labels > 0)
        return {"chen_rcn_cls": self.soft(roi.student_logits, roi.teacher_logits), "chen_rcn_reg": bounded}


class ChenRpnTerm(nn.Module):
    """Chen 2017 RPN distillation on the student's sampled anchors: soft objectness + bounded regression."""

    name = "chen_rpn"

    def __init__(self, pos_weight=1.0, neg_weight=1.5, margin=0.0):
        super().__init__()
        self.soft = DistillBinaryCrossEntropy(pos_weight=pos_weight, neg_weight=neg_weight)
        self.bounded = BoundedRegressionLoss(nu=1.0, margin=margin)  # nu is the chen_rpn_reg weight

    def forward(self, ctx: DistillContext) -> dict:
        rpn = ctx.rpn
        if rpn is None:
            return {}
        bounded = bounded_over_rows(self.bounded, rpn.student_deltas, rpn.teacher_deltas, rpn.regression_targets,
                                    rpn.labels > 0)
        return {"chen_rpn_cls": self.soft(rpn.student_logits, rpn.teacher_logits), "chen_rpn_reg": bounded}
