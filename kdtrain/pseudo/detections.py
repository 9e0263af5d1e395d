"""Post-processing of teacher detections: score threshold, class-wise NMS, top-k."""

from __future__ import annotations

from typing import Optional

import torch
from torchvision.models import detection
from torchvision.ops import batched_nms


def set_postprocess(model, score_threshold: float, nms_iou: float, max_detections: int) -> None:
    """Make torchvision's own post-processing use our settings (so it filters no more than we ask)."""
    target = model.roi_heads if isinstance(model, detection.FasterRCNN) else model
    target.score_thresh = score_threshold
    target.nms_thresh = nms_iou
    target.detections_per_img = max_detections


def filter_detections(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, score_threshold: float,
                      nms_iou: Optional[float], max_detections: Optional[int]):
    """Keep score >= threshold, then class-wise NMS (None: off), then the best max_detections."""
    keep = scores >= score_threshold
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    if nms_iou is not None and boxes.numel():
        keep = batched_nms(boxes, scores, labels, nms_iou)
    else:
        keep = torch.argsort(scores, descending=True)
    if max_detections is not None:
        keep = keep[:max_detections]
    return boxes[keep], scores[keep], labels[keep]
