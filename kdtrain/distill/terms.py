"""Distillation loss terms, composed from the kdops.nn modules.

A term owns its trainable pieces (the feature terms: a kdops.nn MapsDistiller with one module per
paired level, adaptation layers and GcBlocks) and returns raw, unweighted losses keyed by name; the
Distiller weights and logs them.
What each term does next to its paper and official code: docs/recipes.md.
"""

from __future__ import annotations

import torch
from torch import nn

from kdops.nn import BoundedRegressionLoss, DistillBinaryCrossEntropy, DistillCrossEntropy
from kdops.nn.maps_distiller import MapsDistiller, match_size as matched_student_feature  # noqa: F401 (visualize)
from kdtrain.distill.context import DistillContext


class FeatureTerm(nn.Module):
    """A feature recipe: a kdops.nn MapsDistiller on the backbones' levels, which kdtrain computes itself.

    ``student_levels``/``teacher_levels``: {level: kdops.nn.pairing.Level(channels, stride)}, the strides
    in the teacher's input pixels; ``pairs``: (student level, teacher level) of each pair, as the Distiller
    paired them by stride (kdtrain.distill.levels.pair_levels: every student level of a stride takes the
    teacher's first level of it, e.g. a MobileNetV3-FPN teacher's first stride-32 level). The pair losses
    are summed, as the official FGD, CWD and PKD configs add one loss per FPN level; ImitationTerm
    averages them (docs/recipes.md).
    """

    name = ""
    reduction = "sum"
    needs_boxes = False

    def __init__(self, student_levels: dict, teacher_levels: dict, pairs: list, **options):
        super().__init__()
        self.distiller = MapsDistiller(student_levels, teacher_levels, pairs, loss=(self.name, options),
                                       reduction=self.reduction)

    def forward(self, ctx: DistillContext) -> dict:
        # Boxes in the teacher's padded pixels; MapsDistiller divides them by each pair's stride.
        boxes = [t["boxes"] for t in ctx.targets] if self.needs_boxes else None
        return {self.name: self.distiller.distil(ctx.student_features, ctx.teacher_features, boxes)["total"]}


class ImitationTerm(FeatureTerm):
    """Hint learning with a 1x1 adaptation (Chen 2017 §3.4), optional box mask (docs/math.md §5).

    Averaged over levels: Chen 2017 imitates one hint layer, so the term keeps one layer's weight.
    """

    name = "imitation"
    reduction = "mean"

    def __init__(self, student_levels, teacher_levels, pairs, loss="mse", normalize="mean", mask="none"):
        if mask not in ("none", "boxes"):
            raise ValueError(f"imitation mask must be 'none' or 'boxes', got {mask!r}")
        self.needs_boxes = mask == "boxes"  # 0/1 mask of the (ground-truth or pseudo-label) boxes on each level
        super().__init__(student_levels, teacher_levels, pairs, loss=loss, normalize=normalize, adapt=True, mask=mask)


def fgd_preset(family: str) -> str:
    """The FGDLoss preset of a student family. FGD publishes no SSD config: SSD takes the one-stage
    anchor-based one (RetinaNet's)."""
    return "retinanet" if family == "ssd" else family


class FGDTerm(FeatureTerm):
    """Focal and global distillation (Yang 2022) with kdops' per-family preset weights.

    After each call ``last_terms`` holds the weighted parts summed over levels (detached tensors,
    no host sync): fgd_fg, fgd_bg, fgd_attention, fgd_global; they add up to the ``fgd`` loss.
    """

    name = "fgd"
    needs_boxes = True

    def __init__(self, student_levels, teacher_levels, pairs, family="two_stage"):
        self.family = fgd_preset(family)
        super().__init__(student_levels, teacher_levels, pairs, family=self.family)
        self.last_terms: dict = {}

    def forward(self, ctx):
        out = super().forward(ctx)
        self.last_terms = {}
        for module in self.distiller.losses:
            for k, v in module.last_terms.items():
                self.last_terms[f"fgd_{k}"] = self.last_terms.get(f"fgd_{k}", 0) + v
        return out


class CWDTerm(FeatureTerm):
    """Channel-wise distillation, kdops.nn.CWDLoss (docs/math.md §6); a 1x1 adaptation conv only when
    the channel counts differ (mmrazor's CWD and PKD detection configs distil equal-width FPNs without one)."""

    name = "cwd"

    def __init__(self, student_levels, teacher_levels, pairs, tau=1.0):
        super().__init__(student_levels, teacher_levels, pairs, tau=tau)


class PKDTerm(FeatureTerm):
    """Pearson-correlation feature distillation, kdops.nn.PKDLoss, which resizes the student itself."""

    name = "pkd"


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
