"""The student + frozen teacher + distillation terms, as one trainable module.

Only the student and the terms' adaptation layers are parameters of this
module; the teacher is held outside ``state_dict`` and DDP, in eval mode,
and always runs under ``no_grad``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Optional

import torch
from torch import nn
from torchvision.models import detection
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.ops import box_iou

from kdops.nn.pairing import Level
from kdtrain.distill import recipes, terms as T
from kdtrain.distill.auto_weights import DEFAULT_ITERS, DEFAULT_RATIO, AutoWeights
from kdtrain.distill.check import gradient_ratios
from kdtrain.distill.context import DistillContext, RoiOutputs, RpnPair
from kdtrain.distill.grad_flags import new_flag, watched
from kdtrain.distill.levels import image_strides, pair_levels, probe_levels
from kdtrain.distill.rpn import anchor_layout_mismatch, rpn_forward_with_logits, teacher_rpn_outputs
from kdtrain.errors import UsageError
from kdtrain.models import detector_family, input_side, needs_own_transform


FEATURE_TERMS = ("imitation", "fgd", "cwd", "pkd", "mgd")


def _as_dict(features) -> "OrderedDict[str, torch.Tensor]":
    return OrderedDict([("0", features)]) if isinstance(features, torch.Tensor) else features


def check_degenerate_boxes(targets) -> None:
    """ValueError naming the first box with x2 <= x1 or y2 <= y1 (call it on host tensors: no device wait)."""
    for i, t in enumerate(targets):
        bad = (t["boxes"][:, 2:] <= t["boxes"][:, :2]).any(dim=1)
        if bad.any():
            raise ValueError(f"degenerate box {t['boxes'][bad][0].tolist()} in image {t.get('image_id', i)}")


def pair_alignment(family: str) -> str:
    """How paired maps of different sizes line up (terms.FeatureTerm, and kdtrain visualize): SSDlite squashes
    the image to a square ("resize"), every other student pads it at the bottom and right as the teacher does
    ("crop")."""
    return "resize" if family == "ssd" else "crop"


class Distiller(nn.Module):
    def __init__(self, student: nn.Module, teacher: Optional[nn.Module] = None, recipe: str = "none",
                 weights: Optional[dict] = None, warmup_iters: int = 0, imitation_mask: str = "none",
                 log=print, student_scale: float = 1.0, auto_ratio: float = DEFAULT_RATIO,
                 auto_iters: int = DEFAULT_ITERS):
        super().__init__()
        self.student = student
        self.term_names = recipes.parse_recipe(recipe)
        self.weights, auto_keys = recipes.parse_weight_spec(weights)
        self.auto: Optional[AutoWeights] = None  # set below when a key of a built term is automatic
        self.warmup_iters = warmup_iters
        self.family = detector_family(student)
        self._teacher = [teacher]  # a list keeps it out of parameters/state_dict/DDP
        self.terms = nn.ModuleDict()
        self.pairs = []
        self.rpn_distill = False
        self.profile = False       # when on, time each term (with CUDA sync)
        self.term_seconds: dict = {}
        self.raw: dict = {}          # the last step's unweighted losses (detached tensors)
        self.grad_ratio_every = 0     # the trainer's --grad-ratio-every: gradient_report's interval (0: never)
        self._ratio_report = None
        self.watch_gradients = False  # when on, grad_flags: per term, whether its last gradient was finite
        self.grad_flags: dict = {}    # term name -> 0-dim bool tensor, written during backward
        self.last_context = None   # kept only when profile is on (it holds the graph)
        self._log = log
        self._rpn_shape_warned = False
        # A low-resolution student (Chen 2017 §4.1) has its own smaller input; the
        # teacher then sees full resolution through its own transform.
        self.student_scale = float(student_scale)
        self.teacher_own_input = False
        if not self.term_names:
            return
        if teacher is None:
            raise UsageError(f"recipe {recipe!r} needs a teacher (--teacher CHECKPOINT)")
        freeze(teacher)
        s_channels, s_strides = probe_levels(student.backbone)
        t_channels, t_strides = probe_levels(teacher.backbone)
        # A fixed-size student (SSDlite) or another normalisation: the teacher also gets its own
        # input, and levels pair by stride in image pixels (the ratio of the two input sides).
        self.teacher_own_input = self.student_scale != 1.0 or needs_own_transform(student, teacher)
        scale = self.student_scale
        if scale == 1.0 and self.teacher_own_input:
            scale = input_side(student) / input_side(teacher)
        self.pairs = pair_levels(s_strides, t_strides, student_input_scale=scale)
        log("[kdtrain] level pairs (student->teacher @stride): "
            + ", ".join(f"{p.student}->{p.teacher}@{p.stride}" for p in self.pairs))
        # The feature terms distil these pairs: their levels by name, strides in the teacher's input pixels.
        s_levels = {k: Level(s_channels[k], float(s)) for k, s in image_strides(s_strides, scale).items()}
        t_levels = {k: Level(t_channels[k], float(s)) for k, s in t_strides.items()}
        pairs = [(p.student, p.teacher) for p in self.pairs]
        align = pair_alignment(self.family)
        for name in self.term_names:
            if name in FEATURE_TERMS and not self.pairs:
                raise UsageError(f"{name}: no student level shares a stride with a teacher level")
            if name == "imitation":
                self.terms[name] = T.ImitationTerm(s_levels, t_levels, pairs, mask=imitation_mask, align=align)
            elif name == "fgd":
                self.terms[name] = T.FGDTerm(s_levels, t_levels, pairs, family=self.family, align=align)
            elif name == "cwd":
                self.terms[name] = T.CWDTerm(s_levels, t_levels, pairs, align=align)
            elif name == "pkd":
                self.terms[name] = T.PKDTerm(s_levels, t_levels, pairs, align=align)
            elif name == "mgd":
                self.terms[name] = T.MGDTerm(s_levels, t_levels, pairs, family=self.family, align=align)
            elif name in ("chen_rcn", "chen_rpn"):
                self._check_two_stage_pair(name)
                if name == "chen_rpn":
                    why = anchor_layout_mismatch(student.rpn, teacher.rpn)
                    if why:
                        log(f"[kdtrain] RPN distillation off: {why}")
                        continue
                    self.rpn_distill = True  # feature shapes are checked again each step
                self.terms[name] = T.ChenRcnTerm() if name == "chen_rcn" else T.ChenRpnTerm()
        built = {k for name in self.terms for k in recipes.TERM_KEYS[name]}
        if any(k in built for k in auto_keys):
            self.auto = AutoWeights([k for k in auto_keys if k in built], self.weights, auto_ratio, auto_iters, log)

    @property
    def teacher(self) -> Optional[nn.Module]:
        return self._teacher[0]

    def _check_two_stage_pair(self, name):
        if not (isinstance(self.student, detection.FasterRCNN) and isinstance(self.teacher, detection.FasterRCNN)):
            raise UsageError(f"recipe chen2017 ({name}: head distillation) needs a Faster R-CNN student and teacher, "
                             f"got student {type(self.student).__name__}, teacher {type(self.teacher).__name__}; "
                             "the feature recipes (imitation, fgd, cwd, pkd, mgd) pair any two detectors")
        s_cls = self.student.roi_heads.box_predictor.cls_score.out_features
        t_cls = self.teacher.roi_heads.box_predictor.cls_score.out_features
        if s_cls != t_cls:
            raise UsageError(f"{name}: student has {s_cls} classes, teacher {t_cls}; head distillation needs the same label space")

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # BatchNorm statistics and dropout of the teacher stay frozen
        return self

    def _apply(self, fn, *args, **kwargs):
        # .to()/.cuda() move the (unregistered) teacher along with the student.
        out = super()._apply(fn, *args, **kwargs)
        if self.teacher is not None:
            self.teacher._apply(fn, *args, **kwargs)
        return out

    # ---- forward -----------------------------------------------------------
    def forward(self, images, targets, iteration: int):
        """Training losses: the student's own (torchvision names) + weighted distillation terms.

        ``iteration`` (0-based) places the step in the distillation warm-up and the automatic weights'
        calibration.
        """
        computed = self.keys_to_compute(iteration)
        losses, raw, _ctx = self._losses(images, targets, computed)
        if self._calibrating():
            self.auto.observe(sum(losses.values()), raw, [p for p in self.student.parameters() if p.requires_grad],
                              iteration)
        factor = recipes.warmup_factor(iteration, self.warmup_iters)
        self._ratio_report = None
        if self.grad_ratio_every and iteration % self.grad_ratio_every == 0 and self.training and \
                torch.is_grad_enabled() and raw:
            weights = {k: self.weight(k) * factor for k in raw}
            ratios = gradient_ratios(sum(losses.values()), raw, weights,
                                     [p for p in self.student.parameters() if p.requires_grad])
            self._ratio_report = {"kind": "grad_ratio", "iteration": iteration,
                                  "ratios": {k: r["ratio"] for k, r in ratios.items()}}
        for key, value in raw.items():
            weight = self.weight(key) * factor
            # 0 only for a key still calibrating: logged as 0 and kept off the graph, so its backward never runs.
            losses[f"distill_{key}"] = value * weight if weight != 0 else torch.zeros_like(value)
        # Detached tensors: converting them here would wait for the device every step.
        self.raw = {k: v.detach() for k, v in raw.items()}
        for term in self.terms.values():
            self.raw.update(getattr(term, "last_terms", {}))
        return losses

    def _losses(self, images, targets, computed: dict) -> tuple[dict, dict, DistillContext]:
        """The student's own detection losses, the raw (unweighted) losses of the ``computed`` keys, both with
        their graphs, and the step's context (features and pairs)."""
        student = self.student
        # One shared transform (the student's): both nets see the same padded batch.
        image_list, targets = student.transform(images, targets)
        s_feats = _as_dict(student.backbone(image_list.tensors))
        need_teacher = bool(computed)
        t_feats, t_image_list, t_targets = None, image_list, targets
        if need_teacher:
            with torch.no_grad():
                if self.teacher_own_input:
                    t_image_list, t_targets = teacher_input(self.teacher, images, image_list, targets)
                t_feats = _as_dict(self.teacher.backbone(t_image_list.tensors))
        # Terms see boxes in the teacher's padded pixels (level pairs carry teacher strides).
        ctx = DistillContext(s_feats, t_feats, self.pairs, t_targets)
        if self.family == "two_stage":
            losses = self._faster_rcnn_losses(image_list, s_feats, t_feats, targets, ctx, t_image_list, computed)
        else:
            losses = self._one_stage_losses(image_list, s_feats, targets)
        if self.profile:
            self.last_context = ctx
        raw = {}
        self.term_seconds = dict.fromkeys(self.terms, 0.0)
        self.grad_flags = {}
        watch = self.watch_gradients and self.training and torch.is_grad_enabled()
        for name, keys in computed.items():
            start = self._tick()
            term_ctx = ctx
            if watch:
                self.grad_flags[name] = new_flag(ctx)
                term_ctx = watched(ctx, self.grad_flags[name])
            raw.update(self.terms[name](term_ctx, keys))
            self.term_seconds[name] = self._tick() - start
        return losses, raw, ctx

    def raw_losses(self, images, targets) -> tuple[dict, dict, DistillContext]:
        """_losses with every key of every term: what the distillation check measures (kdtrain/distill/check.py)."""
        return self._losses(images, targets, {name: list(recipes.TERM_KEYS[name]) for name in self.terms})

    def configured_weights(self) -> dict:
        """{loss key: its weight after the warm-up; None for an automatic key (calibrated during training)}."""
        auto = self.auto.keys if self.auto is not None else ()
        return {k: None if k in auto else self.weights[k] for name in self.terms for k in recipes.TERM_KEYS[name]}

    def _calibrating(self) -> bool:
        """Whether this training step measures the automatic weights' gradients."""
        return (self.auto is not None and not self.auto.calibrated and self.training and not self.profile
                and torch.is_grad_enabled())

    def keys_to_compute(self, iteration: int) -> dict:
        """{term name: its loss keys to compute at ``iteration``}, terms without any left out.

        A key whose weight is 0 at this iteration is not computed, so its backward never runs (0 times
        a NaN gradient is NaN). An automatic key still calibrating is the exception: the calibration
        measures its raw loss's gradient, though its weight is 0 until then. Profiling computes every key.
        """
        factor = recipes.warmup_factor(iteration, self.warmup_iters)
        calibrating = self._calibrating()
        computed = {}
        for name in self.terms:
            keys = [k for k in recipes.TERM_KEYS[name] if self.profile or self.weight(k) * factor != 0
                    or (calibrating and k in self.auto.keys)]
            if keys:
                computed[name] = keys
        return computed

    @property
    def last_raw(self) -> dict:
        """The last step's unweighted losses as floats (a host sync: for logs and tests, not the step)."""
        return {k: float(v) for k, v in self.raw.items()}

    def gradient_report(self, iteration: int) -> Optional[dict]:
        """Every ``grad_ratio_every`` iterations, each weighted term's gradient on the student as a ratio to the
        detection loss's (kdtrain/distill/check.py), measured in that step's forward; else None."""
        report = self._ratio_report
        return report if report is not None and report["iteration"] == iteration else None

    def calibration_report(self, iteration: int) -> Optional[dict]:
        """The automatic weights' calibration record (kdtrain/distill/auto_weights.py) when the step at
        ``iteration`` fixed them, else None: the trainer logs it once, in that step."""
        report = self.auto.report if self.auto is not None else None
        return report if report is not None and report["iteration"] == iteration else None

    def weight(self, key: str) -> float:
        """A loss key's weight before the warm-up factor (an automatic one: 0 until calibrated)."""
        if self.auto is not None and key in self.auto.keys:
            return self.auto.weight(key)
        return self.weights[key]

    def effective_weights(self) -> dict:
        """{loss key: weight} of the terms this distiller runs, automatic ones as calibrated so far."""
        return {k: self.weight(k) for name in self.terms for k in recipes.TERM_KEYS[name]}

    def _tick(self) -> float:
        if self.profile and torch.cuda.is_available() and next(self.student.parameters()).is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _faster_rcnn_losses(self, image_list, s_feats, t_feats, targets, ctx, t_image_list, computed):
        student, teacher = self.student, self.teacher
        if self.rpn_distill and "chen_rpn" in computed:
            proposals, rpn_losses, rpn_out = rpn_forward_with_logits(student.rpn, image_list, s_feats, targets)
            with torch.no_grad():
                t_logits, t_deltas, t_shapes = teacher_rpn_outputs(teacher.rpn, t_feats)
            if t_shapes == rpn_out.level_shapes:
                i = rpn_out.sampled
                ctx.rpn = RpnPair(rpn_out.objectness[i], t_logits[i], rpn_out.deltas[i], t_deltas[i],
                                  rpn_out.regression_targets[i], rpn_out.labels[i],
                                  positive=slice(0, rpn_out.num_positive))
            elif not self._rpn_shape_warned:
                self._log(f"[kdtrain] RPN distillation off: anchor grids differ "
                          f"(student {rpn_out.level_shapes}, teacher {t_shapes})")
                self._rpn_shape_warned = True
        else:
            proposals, rpn_losses = student.rpn(image_list, s_feats, targets)
        if "chen_rcn" not in computed:
            _, det_losses = student.roi_heads(s_feats, proposals, image_list.image_sizes, targets)
            return {**rpn_losses, **det_losses}
        # Chen 2017: sample once (the student's proposals), then both box heads on them.
        heads = student.roi_heads
        proposals, _matched, labels, regression_targets = heads.select_training_samples(proposals, targets)
        s_logits, s_reg = _box_head_outputs(heads, s_feats, proposals, image_list.image_sizes)
        with torch.no_grad():
            # The same proposals, mapped to the teacher's resolution when it has its own input;
            # box deltas are relative to the proposal, so both heads' outputs still compare.
            t_proposals = scale_boxes(proposals, image_list.image_sizes, t_image_list.image_sizes)
            t_logits, t_reg = _box_head_outputs(teacher.roi_heads, t_feats, t_proposals, t_image_list.image_sizes)
        loss_classifier, loss_box_reg = fastrcnn_loss(s_logits, s_reg, labels, regression_targets)
        ctx.roi = RoiOutputs(s_logits, t_logits, s_reg, t_reg, torch.cat(labels), torch.cat(regression_targets))
        return {**rpn_losses, "loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}

    def _one_stage_losses(self, image_list, s_feats, targets):
        student = self.student
        feats = list(s_feats.values())
        head_outputs = student.head(feats)
        anchors = student.anchor_generator(image_list, feats)
        if self.family == "fcos":
            num_anchors_per_level = [x.size(2) * x.size(3) for x in feats]
            return student.compute_loss(targets, head_outputs, anchors, num_anchors_per_level)
        if self.family == "ssd":  # SSD.forward's matching, which it does not expose
            matched = [student.proposal_matcher(box_iou(t["boxes"], a)) if t["boxes"].numel()
                       else torch.full((a.size(0),), -1, dtype=torch.int64, device=a.device)
                       for a, t in zip(anchors, targets)]
            return student.compute_loss(targets, head_outputs, anchors, matched)
        return student.compute_loss(targets, head_outputs, anchors)


def scale_boxes(boxes: list, from_sizes: list, to_sizes: list) -> list:
    """Per-image boxes from one resized image size (h, w) to another."""
    if list(from_sizes) == list(to_sizes):
        return boxes
    out = []
    for b, (fh, fw), (th, tw) in zip(boxes, from_sizes, to_sizes):
        # x and y scaled by Python numbers: a (4,) factor tensor would be a host-to-device copy, which waits.
        xy = b.reshape(-1, 2, 2)
        out.append(torch.stack([xy[..., 0] * (tw / fw), xy[..., 1] * (th / fh)], dim=-1).reshape(b.shape))
    return out


def teacher_input(teacher, images, student_image_list, student_targets):
    """The teacher's own transform of the raw images, and the student's boxes mapped onto it."""
    t_image_list, _ = teacher.transform(images)
    boxes = scale_boxes([t["boxes"] for t in student_targets], student_image_list.image_sizes,
                        t_image_list.image_sizes)
    return t_image_list, [{**t, "boxes": b} for t, b in zip(student_targets, boxes)]


def _box_head_outputs(roi_heads, features, proposals, image_sizes):
    x = roi_heads.box_roi_pool(features, proposals, image_sizes)
    x = roi_heads.box_head(x)
    return roi_heads.box_predictor(x)


def freeze(model: nn.Module) -> None:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
