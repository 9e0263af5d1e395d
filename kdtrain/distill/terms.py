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
from kdtrain.distill.context import DistillContext, positive_rows


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

    def __init__(self, student_levels: dict, teacher_levels: dict, pairs: list, align: str = "crop", **options):
        super().__init__()
        # align (Distiller.align): "crop" when both backbones see one image, each padded at the bottom and
        # right to its own size (a low-resolution student's batch is smaller): cell (i, j) of paired levels
        # sees the same pixels, where resizing one map onto the other would shift each cell by the padding's
        # share. "resize" when the student squashes the image to a fixed square (SSDlite).
        self.distiller = MapsDistiller(student_levels, teacher_levels, pairs, loss=(self.name, options),
                                       reduction=self.reduction, align=align)

    def describe_pairs(self, ctx: DistillContext) -> list[dict]:
        """Each pair's levels, map shapes in ``ctx`` and the 1x1 adaptation conv it trains (the distillation check)."""
        out = []
        for i, pair in enumerate(self.distiller.pairs):
            convs = [m for m in (self.distiller.adapt[i], getattr(self.distiller.losses[i], "adapt", None),
                                 getattr(self.distiller.losses[i], "align", None)) if isinstance(m, nn.Conv2d)]
            out.append({"student": pair.student, "teacher": pair.teacher, "stride": int(pair.stride),
                        "student_shape": list(ctx.student_features[pair.student].shape[1:]),
                        "teacher_shape": list(ctx.teacher_features[pair.teacher].shape[1:]),
                        "adaptation": ", ".join(f"1x1 conv {m.in_channels}->{m.out_channels}" for m in convs) or None})
        return out

    def forward(self, ctx: DistillContext, keys=None) -> dict:
        """{name: raw loss}; ``keys`` (the loss keys the Distiller uses this step) is always this one."""
        # Boxes in the teacher's padded pixels; MapsDistiller divides them by each pair's stride.
        boxes = [t["boxes"] for t in ctx.targets] if self.needs_boxes else None
        return {self.name: self.distiller.distil(ctx.student_features, ctx.teacher_features, boxes)["total"]}


class ImitationTerm(FeatureTerm):
    """Hint learning with a 1x1 adaptation (Chen 2017 §3.4), optional box mask (docs/math.md §5).

    Averaged over levels: Chen 2017 imitates one hint layer, so the term keeps one layer's weight.
    """

    name = "imitation"
    reduction = "mean"

    def __init__(self, student_levels, teacher_levels, pairs, loss="mse", normalize="mean", mask="none",
                 align="crop"):
        if mask not in ("none", "boxes"):
            raise ValueError(f"imitation mask must be 'none' or 'boxes', got {mask!r}")
        self.needs_boxes = mask == "boxes"  # 0/1 mask of the (ground-truth or pseudo-label) boxes on each level
        super().__init__(student_levels, teacher_levels, pairs, align, loss=loss, normalize=normalize, adapt=True,
                         mask=mask)


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

    def __init__(self, student_levels, teacher_levels, pairs, family="two_stage", align="crop"):
        self.family = fgd_preset(family)
        super().__init__(student_levels, teacher_levels, pairs, align, family=self.family)
        self.last_terms: dict = {}

    def forward(self, ctx, keys=None):
        out = super().forward(ctx, keys)
        self.last_terms = {}
        for module in self.distiller.losses:
            for k, v in module.last_terms.items():
                self.last_terms[f"fgd_{k}"] = self.last_terms.get(f"fgd_{k}", 0) + v
        return out


class CWDTerm(FeatureTerm):
    """Channel-wise distillation, kdops.nn.CWDLoss (docs/math.md §6); a 1x1 adaptation conv only when
    the channel counts differ (mmrazor's CWD and PKD detection configs distil equal-width FPNs without one)."""

    name = "cwd"

    def __init__(self, student_levels, teacher_levels, pairs, tau=1.0, align="crop"):
        super().__init__(student_levels, teacher_levels, pairs, align, tau=tau)


class PKDTerm(FeatureTerm):
    """Pearson-correlation feature distillation, kdops.nn.PKDLoss, which resizes the student itself."""

    name = "pkd"


def mgd_preset(family: str) -> str:
    """The MGDLoss preset of a student family. MGD's official configs are two-stage (Faster/Mask R-CNN) and
    one-stage (RetinaNet, and the anchor-free RepPoints): FCOS and SSD take the one-stage one."""
    return "two_stage" if family == "two_stage" else "one_stage"


class MGDTerm(FeatureTerm):
    """Masked generative distillation (Yang 2022), kdops.nn.MGDLoss per pair with the preset of the student's
    family. Each level's random masks come from its MGDLoss' own generator, seeded by the run's seed when
    the term is built; their state is in the term's state_dict, so a resumed run draws the same masks."""

    name = "mgd"

    def __init__(self, student_levels, teacher_levels, pairs, family="two_stage", align="crop"):
        self.family = mgd_preset(family)
        super().__init__(student_levels, teacher_levels, pairs, align, family=self.family)


def bounded_over_rows(loss: BoundedRegressionLoss, student, teacher, target, total_rows: int) -> torch.Tensor:
    """``loss`` summed over the rows given (the positive ones) and divided by ``total_rows``, all sampled rows.

    Chen 2017 eq. 1 averages L_reg over all N sampled rows, zero for the negatives, as torchvision's
    own box losses do; kdops averages over the rows it is given, hence the factor. Only the positive
    rows are given, as torchvision's losses read only them: a negative row's target is encoded against
    whatever box it was matched to, and an image without objects gives -inf (the log of a zero size).
    """
    return loss(student, teacher, target) * (student.shape[0] / max(total_rows, 1))


def _wants(keys, key: str) -> bool:
    return keys is None or key in keys


def _present(losses: dict) -> dict:
    return {k: v for k, v in losses.items() if v is not None}


class ChenRcnTerm(nn.Module):
    """Chen 2017 RCN distillation: weighted soft CE + teacher-bounded regression."""

    name = "chen_rcn"

    def __init__(self, background_weight=1.5, temperature=1.0, margin=0.0):
        super().__init__()
        # No target: L_soft alone; torchvision computes the hard CE and the smooth L1 itself.
        self.soft = DistillCrossEntropy(background_weight=background_weight, temperature=temperature)
        self.bounded = BoundedRegressionLoss(nu=1.0, margin=margin)  # nu is the chen_rcn_reg weight

    def forward(self, ctx: DistillContext, keys=None) -> dict:
        """{loss key: raw loss} of ``keys`` (None: both)."""
        roi = ctx.roi
        bounded = None
        if _wants(keys, "chen_rcn_reg"):
            rows, positive = roi.labels.shape[0], positive_rows(roi.labels, roi.positive)
            labels = roi.labels[positive]

            def gt_class_deltas(reg):  # (R, K*4) -> (P, 4): each positive row's deltas of its label
                return reg.reshape(rows, reg.shape[-1] // 4, 4)[positive, labels]

            bounded = bounded_over_rows(self.bounded, gt_class_deltas(roi.student_regression),
                                        gt_class_deltas(roi.teacher_regression), roi.regression_targets[positive],
                                        rows)
        soft = self.soft(roi.student_logits, roi.teacher_logits) if _wants(keys, "chen_rcn_cls") else None
        return _present({"chen_rcn_cls": soft, "chen_rcn_reg": bounded})


class ChenRpnTerm(nn.Module):
    """Chen 2017 RPN distillation on the student's sampled anchors: soft objectness + bounded regression."""

    name = "chen_rpn"

    def __init__(self, pos_weight=1.0, neg_weight=1.5, margin=0.0):
        super().__init__()
        self.soft = DistillBinaryCrossEntropy(pos_weight=pos_weight, neg_weight=neg_weight)
        self.bounded = BoundedRegressionLoss(nu=1.0, margin=margin)  # nu is the chen_rpn_reg weight

    def forward(self, ctx: DistillContext, keys=None) -> dict:
        """{loss key: raw loss} of ``keys`` (None: both); {} when the anchor layouts differ."""
        rpn = ctx.rpn
        if rpn is None:
            return {}
        bounded = None
        if _wants(keys, "chen_rpn_reg"):
            positive = positive_rows(rpn.labels, rpn.positive)
            bounded = bounded_over_rows(self.bounded, rpn.student_deltas[positive], rpn.teacher_deltas[positive],
                                        rpn.regression_targets[positive], rpn.labels.shape[0])
        soft = self.soft(rpn.student_logits, rpn.teacher_logits) if _wants(keys, "chen_rpn_cls") else None
        return _present({"chen_rpn_cls": soft, "chen_rpn_reg": bounded})
