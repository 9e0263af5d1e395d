"""Head distillation losses of one-stage detectors as modules with the papers' defaults: the sigmoid-head terms of
BCKD and CrossKD (quality-focal KD and the box term, docs/math.md §12) and localization distillation on box-edge
distributions (LD, docs/math.md §11)."""

from typing import Optional

import torch
from torch import Tensor, nn

from kdops import _checks
from kdops._layout import acc_dtype
from kdops.ops.ld_loss import ld_loss
from kdops.ops.quality_focal_kd import quality_focal_kd
from kdops.reference._common import safe_mean, without_weightless
from kdops.reference.quality_focal_kd import NORMALIZERS


def _divided(total: Tensor, avg_factor, who: str) -> Tensor:
    """total / avg_factor: a number > 0, or a tensor (e.g. the number of positives, clamped to >= 1 by the caller;
    not checked: reading it would sync with the GPU)."""
    if not isinstance(avg_factor, Tensor):
        avg_factor = _checks.positive(avg_factor, who, "avg_factor")
    return total / avg_factor


class QualityFocalKDLoss(nn.Module):
    """loss_weight * quality-focal KD between two sigmoid classification heads (BCKD, CrossKD; docs/math.md §12).

    Each row (anchor or location) i and class c adds BCE(z_s, sigmoid(z_t)) * |sigmoid(z_s) - sigmoid(z_t)|^beta,
    weighted by the row's weight. The official code divides the sum by the number of positive anchors: pass it
    as avg_factor (CrossKD RetinaNet/GFL and BCKD: loss_weight 1 with mmdet's label_weights as weight; CrossKD
    FCOS: loss_weight 0.4, avg_factor the positives' centerness sum, no weight). Without avg_factor the loss is
    normalised by `normalize` (kdops.quality_focal_kd).

    Where the rows come from (rows of student and teacher must be the same anchors: the same strides, anchor
    sizes and aspect ratios on the same image size):

    - torchvision RetinaNet and FCOS: `model.head.classification_head(features)` returns (N, sum_l H_l W_l A, K)
      logits, each level's (N, A K, H, W) map read as (N, H, W, A, K), the levels concatenated (A = 9 anchors for
      RetinaNet, 1 location for FCOS; K = num_classes, column 0 the never-positive background of torchvision's
      COCO models). `model.head.regression_head(features)` returns (N, sum_l H_l W_l A, 4) in the same row order:
      RetinaNet's box deltas (`model.box_coder.decode_single(deltas, anchors)`), FCOS' (l, t, r, b) distances in
      units of the anchor's size, i.e. the stride (`model.box_coder.decode(distances, anchors)`).
    - Ultralytics (v8 and later Detect heads): the detection loss reads `preds["scores"]` (B, nc, A) and
      `preds["boxes"]` (B, 4 reg_max, A) over the A = sum_l H_l W_l anchor points, levels concatenated:
      `scores.permute(0, 2, 1)` gives (B, A, nc) logits (sigmoid BCE, no background column), and
      `v8DetectionLoss.bbox_decode(anchor_points, boxes.permute(0, 2, 1))` (B, A, 4) xyxy boxes in stride units.
    - mmdet heads (the official code): each level's (N, A C, H, W) map flattened to (N H W A, C).

    Ignored anchors go in with weight 0 (torchvision's matcher marks them -2), not by indexing: no host sync, and
    their logits may hold anything.

    Args:
        beta: the focusing exponent (official: 1), a number >= 0.
        normalize: "sum", "mean" (the number of rows) or "weight" (the sum of the weights), without avg_factor.
        loss_weight: the factor on the loss.
        backend: kdops backend, None for automatic.

    forward(student_logits, teacher_logits, weight=None, avg_factor=None): (..., C) logits (the teacher is
    detached and cast to the student's dtype), a per-row weight of the rows' shape, and the official divisor (a
    number > 0 or a tensor).
    """

    def __init__(self, beta: float = 1.0, normalize: str = "mean", loss_weight: float = 1.0,
                 backend: Optional[str] = None):
        super().__init__()
        self.beta, self.normalize, self.loss_weight, self.backend = beta, normalize, loss_weight, backend

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, weight: Optional[Tensor] = None,
                avg_factor=None) -> Tensor:
        teacher_logits = teacher_logits.detach().to(student_logits.dtype)
        normalize = self.normalize if avg_factor is None else "sum"
        loss = quality_focal_kd(student_logits, teacher_logits, weight=weight, beta=self.beta, normalize=normalize,
                                backend=self.backend)
        if avg_factor is not None:
            loss = _divided(loss, avg_factor, "nn.QualityFocalKDLoss")
        return self.loss_weight * loss

    def extra_repr(self) -> str:
        return f"beta={self.beta}, normalize={self.normalize!r}, loss_weight={self.loss_weight}"


def _paired_iou_loss(student: Tensor, teacher: Tensor, kind: str, eps: float) -> Tensor:
    """The GIoU loss (1 - GIoU) or the IoU loss (-log IoU) of each pair of (..., 4) xyxy boxes, as mmdet's
    GIoULoss and IoULoss (eps clamps the union, the enclosing area and the IoU)."""
    area_s = (student[..., 2] - student[..., 0]) * (student[..., 3] - student[..., 1])
    area_t = (teacher[..., 2] - teacher[..., 0]) * (teacher[..., 3] - teacher[..., 1])
    inter = (torch.minimum(student[..., 2:], teacher[..., 2:]) - torch.maximum(student[..., :2], teacher[..., :2]))
    inter = inter.clamp(min=0).prod(dim=-1)
    union = (area_s + area_t - inter).clamp(min=eps)
    iou = inter / union
    if kind == "iou":
        return -iou.clamp(min=eps).log()
    enclose = torch.maximum(student[..., 2:], teacher[..., 2:]) - torch.minimum(student[..., :2], teacher[..., :2])
    enclose = enclose.clamp(min=0).prod(dim=-1).clamp(min=eps)
    return 1 - (iou - (enclose - union) / enclose)


class BoxKDLoss(nn.Module):
    """loss_weight * the box term of BCKD and CrossKD: an IoU loss between the student's and the teacher's decoded
    boxes of each row, weighted per row (docs/math.md §12.1).

    A composition of PyTorch ops (8 numbers per row; measured in benchmarks/bench_quality_focal_kd.py), computed
    in float32 at least (float16 box areas overflow). The official weights come from kdops.nn.box_kd_weights.

    Args:
        kind: "giou" (1 - GIoU: CrossKD RetinaNet, ATSS and GFL, BCKD) or "iou" (-log IoU: CrossKD FCOS).
        normalize: "sum", "mean" (the number of rows) or "weight" (the sum of the weights: CrossKD GFL), without
            avg_factor.
        loss_weight: the factor on the loss (official: 1; 0.75 for CrossKD FCOS; 4 for BCKD).
        eps: mmdet's clamp of the union, the enclosing area and the IoU.

    forward(student_boxes, teacher_boxes, weight=None, avg_factor=None): (..., 4) xyxy boxes (the teacher's are
    detached), a per-row weight of the rows' shape (a row of weight 0 adds exactly 0 and gets a zero gradient,
    whatever its boxes hold), and the official divisor (a number > 0 or a tensor).
    """

    def __init__(self, kind: str = "giou", normalize: str = "mean", loss_weight: float = 1.0, eps: float = 1e-6):
        super().__init__()
        self.kind = _checks.choice(kind, ("giou", "iou"), "nn.BoxKDLoss", "kind")
        self.normalize = _checks.choice(normalize, NORMALIZERS, "nn.BoxKDLoss", "normalize")
        self.loss_weight, self.eps = loss_weight, _checks.positive(eps, "nn.BoxKDLoss", "eps")

    def forward(self, student_boxes: Tensor, teacher_boxes: Tensor, weight: Optional[Tensor] = None,
                avg_factor=None) -> Tensor:
        who = "nn.BoxKDLoss"
        _checks.float_tensor(student_boxes, who, "student_boxes")
        if student_boxes.dim() < 1 or student_boxes.shape[-1] != 4:
            raise ValueError(f"kdops.{who}: student_boxes must be (..., 4) xyxy boxes, "
                             f"got shape {tuple(student_boxes.shape)}")
        _checks.tensor(teacher_boxes, who, "teacher_boxes")
        _checks.same_layout(student_boxes, teacher_boxes, who, "student_boxes", "teacher_boxes")
        dtype = torch.promote_types(acc_dtype(student_boxes.dtype), torch.float32)
        student, teacher = student_boxes.to(dtype), teacher_boxes.detach().to(dtype)
        rows = student.shape[:-1]
        if weight is not None:
            _checks.float_tensor(weight, who, "weight")
            if weight.shape != rows:
                raise ValueError(f"kdops.{who}: weight must have the rows' shape {tuple(rows)}, "
                                 f"got {tuple(weight.shape)}")
            _checks.detached(weight, who, "weight")
            weight = weight.to(dtype)
            student, teacher = (without_weightless(b, weight[..., None]) for b in (student, teacher))
        per_row = _paired_iou_loss(student, teacher, self.kind, self.eps)
        if weight is not None:  # a select: a row of weight 0 adds exactly 0 (docs/math.md §0)
            per_row = torch.where(weight == 0, torch.zeros_like(per_row), weight * per_row)
        total = per_row.sum()
        if avg_factor is not None:
            total = _divided(total, avg_factor, who)
        elif self.normalize == "weight" and weight is not None:
            total = safe_mean(total, weight.sum())
        elif self.normalize != "sum":  # "mean", and "weight" without weights
            total = total / max(per_row.numel(), 1)
        return self.loss_weight * total

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, normalize={self.normalize!r}, loss_weight={self.loss_weight}"


def box_kd_weights(student_logits: Tensor, teacher_logits: Tensor, *, rule: str = "teacher_score",
                   weight: Optional[Tensor] = None) -> Tensor:
    """The official per-row weights of the box term (docs/math.md §12.1), detached, of the rows' shape.

    rule="teacher_score" (CrossKD): sigmoid(max_c z_t), the teacher's top class probability.
    rule="score_gap" (BCKD): max_c |sigmoid(z_t) - sigmoid(z_s)|, where the heads disagree most.
    Each is multiplied by `weight` (mmdet's label_weights; rows of weight 0 get exactly 0, whatever their logits
    hold). student_logits and teacher_logits are (..., C); the student's are read by "score_gap" only.
    """
    who = "nn.box_kd_weights"
    _checks.choice(rule, ("teacher_score", "score_gap"), who, "rule")
    _checks.float_tensor(teacher_logits, who, "teacher_logits")
    _checks.tensor(student_logits, who, "student_logits")
    _checks.same_layout(student_logits, teacher_logits, who, "student_logits", "teacher_logits")
    with torch.no_grad():
        dtype = acc_dtype(teacher_logits.dtype)
        t = teacher_logits.to(dtype)
        if rule == "teacher_score":
            r = torch.sigmoid(t.max(dim=-1).values)
        else:
            r = (torch.sigmoid(t) - torch.sigmoid(student_logits.to(dtype))).abs().max(dim=-1).values
        if weight is not None:
            if weight.shape != r.shape:
                raise ValueError(f"kdops.{who}: weight must have the rows' shape {tuple(r.shape)}, "
                                 f"got {tuple(weight.shape)}")
            w = weight.to(dtype)
            r = torch.where(w == 0, torch.zeros_like(r), w * r)
    return r


def _broadcasts_to(shape, target) -> bool:
    """Whether a tensor of `shape` expands to `target` (torch's broadcasting, into target's shape)."""
    return len(shape) <= len(target) and all(a in (1, b) for a, b in zip(reversed(shape), reversed(target)))


class LDLoss(nn.Module):
    """loss_weight * localization distillation (LD, Zheng et al. 2022) between two box-edge distribution heads
    (docs/math.md §11).

    Each box edge is a distribution over n bins and adds T^2 / n * KL(softmax(z_t / T) || softmax(z_s / T)),
    times its weight (kdops.ld_loss). The official code (GFL's LDHead) divides the sum by a constant avg_factor:
    main region loss_weight 0.25, avg_factor 4, weight the student's largest sigmoid class score (detached) on
    the positive anchors; valuable localization region loss_weight 0.25, avg_factor 16, weight the region's
    values; each anchor's weight repeated on its 4 edges. Without avg_factor the loss is normalised by
    `normalize`.

    Where the distributions come from (the last dimension holds the bins, the leading ones are the edges):

    - Ultralytics (v8 and later Detect heads; reg_max = 16 bins per edge, the DFL module's c1): the training
      output preds["boxes"] is (B, 4 * reg_max, A) over the A anchor points (levels concatenated), channel
      edge * reg_max + bin (edges l, t, r, b), so
          dist = preds["boxes"].view(B, 4, reg_max, A).permute(0, 3, 1, 2)       # (B, A, 4, reg_max)
      are the distributions v8DetectionLoss.bbox_decode softmaxes (end-to-end heads: preds["one2many"]).
      Ultralytics' own DFL weight, with normalize="weight", gives its DFL normalisation (the weighted mean over
      the foreground of each anchor's mean over its edges):
          weight = (target_scores.sum(-1) * fg_mask)[..., None]                  # (B, A, 1), 0 off the foreground
    - mmdet GFL (reg_max = 16, so 17 bins): each level's bbox_pred (N, 4 * 17, H, W) as
      bbox_pred.permute(0, 2, 3, 1).reshape(N, H * W, 4, 17), the levels concatenated on dimension 1.

    Student and teacher must be the same anchors' edges with the same number of bins. Anchors that do not count
    go in with weight 0, not by indexing: no host sync, and their logits may hold anything.

    Args:
        temperature: T (official: 10), a finite number >= 1e-30.
        normalize: "sum", "mean" (the number of edges) or "weight" (the sum of the weights), without avg_factor.
        loss_weight: the factor on the loss.
        backend: kdops backend, None for automatic.

    forward(student_logits, teacher_logits, weight=None, avg_factor=None): (..., n) logits (the teacher is
    detached and cast to the student's dtype), a constant weight that broadcasts to the edges' shape (...), and
    the official divisor (a number > 0 or a tensor).
    """

    def __init__(self, temperature: float = 10.0, normalize: str = "mean", loss_weight: float = 1.0,
                 backend: Optional[str] = None):
        super().__init__()
        self.temperature, self.normalize, self.loss_weight, self.backend = temperature, normalize, loss_weight, backend

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, weight: Optional[Tensor] = None,
                avg_factor=None) -> Tensor:
        who = "nn.LDLoss"
        _checks.float_tensor(student_logits, who, "student_logits")
        _checks.tensor(teacher_logits, who, "teacher_logits")
        if student_logits.dim() < 1:
            raise ValueError(f"kdops.{who}: student_logits must be (..., bins) logits, got a 0-dim tensor")
        teacher_logits = teacher_logits.detach().to(student_logits.dtype)
        _checks.same_layout(student_logits, teacher_logits, who, "student_logits", "teacher_logits")
        edges, bins = student_logits.shape[:-1], student_logits.shape[-1]
        if weight is not None:
            _checks.tensor(weight, who, "weight")
            if not _broadcasts_to(weight.shape, edges):
                raise ValueError(f"kdops.{who}: weight must broadcast to the edges' shape {tuple(edges)}, "
                                 f"got {tuple(weight.shape)}")
            weight = weight.expand(edges).reshape(-1)
        normalize = self.normalize if avg_factor is None else "sum"
        loss = ld_loss(student_logits.reshape(-1, bins), teacher_logits.reshape(-1, bins), weight=weight,
                       temperature=self.temperature, normalize=normalize, backend=self.backend)
        if avg_factor is not None:
            loss = _divided(loss, avg_factor, who)
        return self.loss_weight * loss

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, normalize={self.normalize!r}, loss_weight={self.loss_weight}"
