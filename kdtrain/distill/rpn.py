"""torchvision's RPN forward, also returning the per-anchor logits it samples.

torchvision's ``RegionProposalNetwork.forward`` hides the objectness logits, the box
deltas and the sampled anchors; Chen-2017 RPN distillation needs them, on exactly the
anchors the supervised loss uses. Same calls, same order, same results.
"""

from __future__ import annotations

import dataclasses

import torch
from torch.nn import functional as F
from torchvision.models.detection.rpn import concat_box_prediction_layers


@dataclasses.dataclass
class RpnOutputs:
    objectness: torch.Tensor          # (N * anchors,) student logits
    deltas: torch.Tensor              # (N * anchors, 4) student box deltas
    labels: torch.Tensor              # (N * anchors,) 1 object, 0 background, -1 ignored
    regression_targets: torch.Tensor  # (N * anchors, 4)
    sampled: torch.Tensor             # indices of the anchors the loss uses: the positive ones first
    num_positive: int                 # how many of them are positive (known on the host: no wait)
    level_shapes: list                # (A, H, W) per level, to check layouts
    num_images: int


def rpn_forward_with_logits(rpn, images, features: dict, targets):
    feats = list(features.values())
    objectness, pred_bbox_deltas = rpn.head(feats)
    anchors = rpn.anchor_generator(images, feats)
    num_images = len(anchors)
    level_shapes = [tuple(o.shape[1:]) for o in objectness]
    num_anchors_per_level = [a * h * w for a, h, w in level_shapes]
    objectness, pred_bbox_deltas = concat_box_prediction_layers(objectness, pred_bbox_deltas)
    proposals = rpn.box_coder.decode(pred_bbox_deltas.detach(), anchors).view(num_images, -1, 4)
    boxes, _scores = rpn.filter_proposals(proposals, objectness, images.image_sizes, num_anchors_per_level)

    labels, matched_gt_boxes = rpn.assign_targets_to_anchors(anchors, targets)
    regression_targets = rpn.box_coder.encode(matched_gt_boxes, anchors)
    sampled_pos_inds, sampled_neg_inds = rpn.fg_bg_sampler(labels)
    sampled_pos_inds = torch.where(torch.cat(sampled_pos_inds, dim=0))[0]
    sampled_neg_inds = torch.where(torch.cat(sampled_neg_inds, dim=0))[0]
    sampled_inds = torch.cat([sampled_pos_inds, sampled_neg_inds], dim=0)
    objectness = objectness.flatten()
    labels = torch.cat(labels, dim=0)
    regression_targets = torch.cat(regression_targets, dim=0)
    box_loss = F.smooth_l1_loss(
        pred_bbox_deltas[sampled_pos_inds], regression_targets[sampled_pos_inds], beta=1 / 9, reduction="sum"
    ) / sampled_inds.numel()
    objectness_loss = F.binary_cross_entropy_with_logits(objectness[sampled_inds], labels[sampled_inds])
    losses = {"loss_objectness": objectness_loss, "loss_rpn_box_reg": box_loss}
    return boxes, losses, RpnOutputs(objectness, pred_bbox_deltas, labels, regression_targets, sampled_inds,
                                     int(sampled_pos_inds.numel()), level_shapes, num_images)


def teacher_rpn_outputs(rpn, features: dict) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Teacher's flat per-anchor logits and box deltas, in the same order as the student's."""
    objectness, deltas = rpn.head(list(features.values()))
    shapes = [tuple(o.shape[1:]) for o in objectness]
    flat, flat_deltas = concat_box_prediction_layers(objectness, deltas)
    return flat.flatten(), flat_deltas, shapes


def anchor_layout_mismatch(student_rpn, teacher_rpn) -> str | None:
    """Why per-anchor RPN distillation cannot run (static part), or None."""
    s_gen, t_gen = student_rpn.anchor_generator, teacher_rpn.anchor_generator
    if s_gen.num_anchors_per_location() != t_gen.num_anchors_per_location():
        return (f"anchors per location differ (student {s_gen.num_anchors_per_location()}, "
                f"teacher {t_gen.num_anchors_per_location()})")
    if tuple(map(tuple, s_gen.sizes)) != tuple(map(tuple, t_gen.sizes)):
        return f"anchor sizes differ (student {s_gen.sizes}, teacher {t_gen.sizes})"
    if tuple(map(tuple, s_gen.aspect_ratios)) != tuple(map(tuple, t_gen.aspect_ratios)):
        return f"anchor aspect ratios differ (student {s_gen.aspect_ratios}, teacher {t_gen.aspect_ratios})"
    return None
