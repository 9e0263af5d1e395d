"""Distillation loss terms. Every number comes from a kdops function.

A term owns its trainable adaptation layers (per paired level) and returns
raw, unweighted losses keyed by name; the Distiller weights and logs them.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from kdtrain.distill.boxes import boxes_on_level
from kdtrain.distill.context import DistillContext
from kdtrain.distill.levels import LevelPair
from kdtrain.errors import UsageError


def kdops_op(path: str):
    """Look up ``kdops.<path>``, failing with the op's name if it has not landed."""
    import kdops

    obj = kdops
    for part in path.split("."):
        if not hasattr(obj, part):
            raise NotImplementedError(
                f"this recipe needs kdops.{path}, which this kdops build does not provide yet"
            )
        obj = getattr(obj, part)
    return obj


def require_kdops(names) -> None:
    """Fail at construction, before any training, if a needed kdops op is missing."""
    for name in names:
        kdops_op(name)


def _pair_key(pair: LevelPair) -> str:
    return f"s{pair.student}_t{pair.teacher}"  # ModuleDict keys cannot contain '.'


def matched_student_feature(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Resize the student's map to the teacher's (bilinear) when they differ.

    Happens for a low-resolution student (Chen 2017 §4.1) and when ceil-rounded
    coarse levels differ by a cell; kdops ops require equal shapes.
    """
    if student.shape[-2:] != teacher.shape[-2:]:
        student = F.interpolate(student, size=teacher.shape[-2:], mode="bilinear", align_corners=False)
    return student


class PairedFeatureTerm(nn.Module):
    """Base for terms applied on each (student level, teacher level) pair; losses averaged over pairs."""

    name = ""

    KDOPS: tuple = ()

    def __init__(self, pairs: list[LevelPair], student_channels: dict, teacher_channels: dict):
        super().__init__()
        require_kdops(self.KDOPS)
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
        total = 0.0
        for pair in self.pairs:
            s = ctx.student_features[pair.student]
            t = ctx.teacher_features[pair.teacher]
            total = total + self.pair_loss(self.per_pair[_pair_key(pair)], s, t, pair, ctx)
        return {self.name: total / len(self.pairs)}


class ImitationTerm(PairedFeatureTerm):
    """Hint learning with a 1x1 adaptation (Chen 2017 §3.4), optional box mask (docs/math.md §5)."""

    name = "imitation"
    KDOPS = ("nn.HintLoss", "feature_imitation")

    def __init__(self, pairs, student_channels, teacher_channels, loss="mse", normalize="mean", mask="none"):
        self.loss, self.normalize = loss, normalize
        if mask not in ("none", "boxes"):
            raise ValueError("imitation mask must be 'none' or 'boxes'")
        self.mask = mask
        if mask == "boxes":
            require_kdops(("box_masks",))
        super().__init__(pairs, student_channels, teacher_channels)

    def make_pair_module(self, s_channels, t_channels):
        return kdops_op("nn.HintLoss")(s_channels, t_channels, loss=self.loss, normalize=self.normalize, adapt=True)

    def pair_loss(self, module, student, teacher, pair, ctx):
        mask = None
        if self.mask == "boxes":
            # 0/1 mask of the (ground-truth or pseudo-label) boxes on this level.
            fg, _bg = kdops_op("box_masks")(boxes_on_level(ctx.targets, pair.stride), tuple(teacher.shape[-2:]))
            mask = (fg > 0).to(teacher.dtype)
        adapted = module.adapt(student) if getattr(module, "adapt", None) is not None else student
        if adapted.shape[-2:] != teacher.shape[-2:]:
            adapted = matched_student_feature(adapted, teacher)
            return kdops_op("feature_imitation")(adapted, teacher, mask=mask, loss=self.loss, normalize=self.normalize)
        return module(student, teacher, mask=mask)


class FGDTerm(PairedFeatureTerm):
    """Focal and global distillation (Yang 2022) with kdops' per-family preset weights."""

    name = "fgd"
    KDOPS = ("nn.FGDLoss",)

    def __init__(self, pairs, student_channels, teacher_channels, family="two_stage"):
        self.family = family
        super().__init__(pairs, student_channels, teacher_channels)
        self.last_terms: dict = {}

    def make_pair_module(self, s_channels, t_channels):
        return kdops_op("nn.FGDLoss").preset(self.family, s_channels, t_channels)

    def pair_loss(self, module, student, teacher, pair, ctx):
        student = matched_student_feature(student, teacher)
        loss = module(student, teacher, boxes_on_level(ctx.targets, pair.stride))
        for k, v in (getattr(module, "last_terms", None) or {}).items():
            self.last_terms[f"fgd_{k}"] = self.last_terms.get(f"fgd_{k}", 0.0) + float(v) / len(self.pairs)
        return loss

    def forward(self, ctx):
        self.last_terms = {}
        return super().forward(ctx)


class _AdaptedTerm(PairedFeatureTerm):
    """A 1x1 adaptation conv then a kdops function of (student, teacher)."""

    op_name = ""

    def make_pair_module(self, s_channels, t_channels):
        return nn.Conv2d(s_channels, t_channels, kernel_size=1)

    def pair_loss(self, module, student, teacher, pair, ctx):
        adapted = matched_student_feature(module(student), teacher)
        return self.apply_op(adapted, teacher)


class CWDTerm(_AdaptedTerm):
    """Channel-wise distillation (docs/math.md §6)."""

    name = "cwd"
    KDOPS = ("cwd_loss",)

    def __init__(self, pairs, student_channels, teacher_channels, tau=1.0):
        self.tau = tau
        super().__init__(pairs, student_channels, teacher_channels)

    def apply_op(self, s, t):
        return kdops_op("cwd_loss")(s, t, tau=self.tau)


class PKDTerm(_AdaptedTerm):
    """Pearson-correlation feature distillation (docs/math.md §6)."""

    name = "pkd"
    KDOPS = ("pkd_loss",)

    def apply_op(self, s, t):
        return kdops_op("pkd_loss")(s, t)


class ChenRcnTerm(nn.Module):
    """Chen 2017 RCN distillation: weighted soft CE + teacher-bounded regression."""

    name = "chen_rcn"

    def __init__(self, background_weight=1.5, temperature=1.0, margin=0.0):
        super().__init__()
        require_kdops(("soft_cross_entropy", "bounded_regression"))
        self.background_weight, self.temperature, self.margin = background_weight, temperature, margin

    def forward(self, ctx: DistillContext) -> dict:
        roi = ctx.roi
        num_classes = roi.student_logits.shape[1]
        class_weight = torch.ones(num_classes, device=roi.student_logits.device)
        class_weight[0] = self.background_weight
        soft = kdops_op("soft_cross_entropy")(
            roi.student_logits, roi.teacher_logits, class_weight=class_weight, temperature=self.temperature
        )
        pos = torch.where(roi.labels > 0)[0]
        if pos.numel() == 0:
            bounded = roi.student_regression.sum() * 0.0
        else:
            cls = roi.labels[pos]
            s_reg = roi.student_regression.reshape(len(roi.labels), -1, 4)[pos, cls]
            t_reg = roi.teacher_regression.reshape(len(roi.labels), -1, 4)[pos, cls]
            bounded = kdops_op("bounded_regression")(s_reg, t_reg, roi.regression_targets[pos], margin=self.margin)
        return {"chen_rcn_cls": soft, "chen_rcn_reg": bounded}


class ChenRpnTerm(nn.Module):
    """Chen 2017 RPN objectness distillation on the student's sampled anchors."""

    name = "chen_rpn"

    def __init__(self, pos_weight=1.0, neg_weight=1.5):
        super().__init__()
        require_kdops(("soft_binary_cross_entropy",))
        self.pos_weight, self.neg_weight = pos_weight, neg_weight

    def forward(self, ctx: DistillContext) -> dict:
        if ctx.rpn is None:
            return {}
        loss = kdops_op("soft_binary_cross_entropy")(
            ctx.rpn.student_logits, ctx.rpn.teacher_logits, pos_weight=self.pos_weight, neg_weight=self.neg_weight
        )
        return {"chen_rpn_cls": loss}
