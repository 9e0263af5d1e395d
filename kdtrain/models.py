"""Build torchvision detectors (teachers and students) from a serialisable spec.

A ``ModelSpec`` is stored in every kdtrain checkpoint, so ``eval``/``predict``
and teacher loading can rebuild the exact network without repeating flags.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

from torch import nn
from torchvision.models import detection, get_model_weights
from torchvision.models import resnet as tv_resnet
from torchvision.models import mobilenetv3 as tv_mobilenetv3
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _mobilenet_extractor, _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.ssd import SSD

from kdtrain import checkpoint as ckpt_io
from kdtrain.architectures import (ARCHITECTURES, FIXED_SIZE_DETECTORS, MOBILENET_FASTERRCNN, PRETRAINABLE,
                                   RESNET_FASTERRCNN, TORCHVISION_DETECTORS)
from kdtrain.errors import UsageError

_TORCHVISION_BUILDERS = {name: getattr(detection, name) for name in TORCHVISION_DETECTORS}


@dataclasses.dataclass
class ModelSpec:
    arch: str
    num_classes: int
    weights: Optional[str] = None  # e.g. "DEFAULT" or "COCO_V1" (downloads)
    weights_backbone: Optional[str] = None  # e.g. "DEFAULT" (downloads)
    min_size: Optional[int] = None  # None: the torchvision builder's default
    max_size: Optional[int] = None
    # Extra keyword arguments for the detector constructor
    # (box_batch_size_per_image, rpn_pre_nms_top_n_train, ...).
    # ``anchor_sizes`` (one size in pixels per FPN level, three aspect ratios
    # each) replaces the builder's anchors; it must match the number of levels.
    kwargs: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        return cls(**d)


def is_backbone_file(weights_backbone) -> bool:
    """A --weights-backbone that names a file (kdtrain/pretrain.py writes them), not torchvision weights."""
    return isinstance(weights_backbone, str) and (os.sep in weights_backbone or weights_backbone.endswith(".pth"))


def _backbone_weights(spec: ModelSpec, weights_enum) -> tuple[bool, Any]:
    """(pretrained, the torchvision weights to build with or None) of the spec's --weights-backbone."""
    if spec.weights_backbone is None:
        return False, None
    if is_backbone_file(spec.weights_backbone):
        return True, None
    return True, weights_enum.verify(spec.weights_backbone)


def _load_backbone_file(network: nn.Module, spec: ModelSpec, name: str, load_weights: bool) -> None:
    """A kdtrain backbone file into the classification network, as torchvision loads its ImageNet weights."""
    if not (load_weights and is_backbone_file(spec.weights_backbone)):
        return
    from kdtrain.pretrain import load_backbone_file

    state = load_backbone_file(spec.weights_backbone, name)
    result = network.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(("fc.", "classifier."))]
    if missing or result.unexpected_keys:
        raise UsageError(f"--weights-backbone {spec.weights_backbone}: does not fit {name} "
                         f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})")


def build_detector(spec: ModelSpec, load_weights: bool = True) -> nn.Module:
    """Build the detector; from-scratch models get plain trainable BatchNorm.

    ``load_weights=False`` builds the network a checkpoint's state loads into, reading and downloading no
    weights: a backbone pretrained from a file keeps its frozen BatchNorm and frozen stages; one pretrained
    from torchvision's weights is rebuilt with plain BatchNorm (the same function in eval mode).
    """
    if not load_weights and (spec.weights is not None or not is_backbone_file(spec.weights_backbone)):
        spec = dataclasses.replace(spec, weights=None, weights_backbone=None)
    model = _build_detector(spec, load_weights)
    if "anchor_sizes" in spec.kwargs:
        _check_anchor_levels(model, spec)
    return model


def _build_detector(spec: ModelSpec, load_weights: bool) -> nn.Module:
    if is_backbone_file(spec.weights_backbone) and spec.arch not in PRETRAINABLE:
        raise UsageError(f"--weights-backbone {spec.weights_backbone}: a backbone file (kdtrain's pretraining) is "
                         f"read by {', '.join(PRETRAINABLE)}; {spec.arch} takes "
                         "torchvision's weights by name (e.g. DEFAULT)")
    kwargs = dict(spec.kwargs)
    if spec.arch in FIXED_SIZE_DETECTORS:
        model = _build_fixed_size(spec, kwargs)
        _replace_classifier(model, spec.num_classes)
        return model
    if spec.min_size is not None:
        kwargs["min_size"] = spec.min_size
    if spec.max_size is not None:
        kwargs["max_size"] = spec.max_size
    if "anchor_sizes" in kwargs:
        _set_anchor_generator(spec.arch, kwargs, kwargs.pop("anchor_sizes"))
    if spec.arch in _TORCHVISION_BUILDERS:
        builder = _TORCHVISION_BUILDERS[spec.arch]
        if spec.weights is not None:
            # Pretrained detector heads have the dataset's classes; build as
            # published, then swap the classifier for ours if counts differ.
            model = builder(weights=spec.weights, weights_backbone=spec.weights_backbone, **kwargs)
            _replace_classifier(model, spec.num_classes)
            return model
        return builder(
            weights=None,
            weights_backbone=spec.weights_backbone,
            num_classes=spec.num_classes,
            **kwargs,
        )
    if spec.arch in RESNET_FASTERRCNN:
        if spec.weights is not None:
            raise UsageError(f"torchvision publishes no detector weights for {spec.arch}; use --weights-backbone")
        depth = RESNET_FASTERRCNN[spec.arch]
        pretrained, torchvision_weights = _backbone_weights(spec, get_model_weights(depth))
        # Same rule as torchvision's builders: frozen BN only on pretrained backbones.
        norm_layer = torchvision_frozen_bn() if pretrained else nn.BatchNorm2d
        trainable = 3 if pretrained else 5
        resnet = getattr(tv_resnet, depth)(weights=torchvision_weights, norm_layer=norm_layer)
        _load_backbone_file(resnet, spec, depth, load_weights)
        backbone = _resnet_fpn_extractor(resnet, trainable)
        return detection.FasterRCNN(backbone, num_classes=spec.num_classes, **kwargs)
    if spec.arch in MOBILENET_FASTERRCNN:
        if spec.weights is not None:
            raise UsageError(f"torchvision publishes no detector weights for {spec.arch}; use --weights-backbone")
        pretrained, torchvision_weights = _backbone_weights(spec, tv_mobilenetv3.MobileNet_V3_Large_Weights)
        norm_layer = torchvision_frozen_bn() if pretrained else nn.BatchNorm2d
        trainable = 3 if pretrained else 6
        mobilenet = tv_mobilenetv3.mobilenet_v3_large(weights=torchvision_weights, norm_layer=norm_layer)
        _load_backbone_file(mobilenet, spec, "mobilenet_v3_large", load_weights)
        returned = MOBILENET_FASTERRCNN[spec.arch]
        backbone = _mobilenet_extractor(mobilenet, True, trainable, returned_layers=returned)
        if "rpn_anchor_generator" not in kwargs:  # torchvision's rule: 8 x stride
            kwargs["rpn_anchor_generator"] = _anchor_generator([32, 64, 128, 256])
        return detection.FasterRCNN(backbone, num_classes=spec.num_classes, **kwargs)
    raise UsageError(f"unknown architecture {spec.arch!r}; choose one of: {', '.join(ARCHITECTURES)}")


def _build_fixed_size(spec: ModelSpec, kwargs: dict) -> nn.Module:
    """SSDlite: torchvision fixes its square input in the builder, so --min-size sets it afterwards."""
    side = spec.min_size if spec.min_size is not None else FIXED_SIZE_DETECTORS[spec.arch]
    if spec.max_size is not None and spec.max_size != side:
        raise UsageError(f"{spec.arch} resizes every image to one square: give --min-size only (its side, "
                         f"default {FIXED_SIZE_DETECTORS[spec.arch]}), or --max-size equal to it; "
                         f"got --min-size {spec.min_size}, --max-size {spec.max_size}")
    if "anchor_sizes" in kwargs:
        raise UsageError(f"anchor_sizes is not supported for {spec.arch} (its default boxes scale with the image)")
    builder = _TORCHVISION_BUILDERS[spec.arch]
    if spec.weights is not None:
        model = builder(weights=spec.weights, weights_backbone=spec.weights_backbone, **kwargs)
    else:
        model = builder(weights=None, weights_backbone=spec.weights_backbone, num_classes=spec.num_classes, **kwargs)
    model.transform.min_size, model.transform.max_size = (side,), side
    model.transform.fixed_size = (side, side)
    return model


def input_side(model: nn.Module) -> int:
    """The side its transform resizes to: the fixed square's, else the shorter side's (eval size)."""
    t = model.transform
    return t.fixed_size[0] if t.fixed_size is not None else t.min_size[-1]


def needs_own_transform(student: nn.Module, teacher: nn.Module) -> bool:
    """True when the teacher cannot read the student's transformed batch: a fixed-size input
    (SSDlite squashes to a square, no padding) or another pixel normalisation."""
    s, t = student.transform, teacher.transform
    return (s.fixed_size is not None or t.fixed_size is not None
            or list(s.image_mean) != list(t.image_mean) or list(s.image_std) != list(t.image_std))


def _anchor_generator(sizes, scales=(1.0,)) -> AnchorGenerator:
    return AnchorGenerator(sizes=tuple(tuple(s * k for k in scales) for s in sizes),
                           aspect_ratios=((0.5, 1.0, 2.0),) * len(sizes))


# torchvision builders that set their own anchor generator (and heads sized for it).
_OWN_ANCHORS = ("fasterrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_fpn",
                "fasterrcnn_mobilenet_v3_large_320_fpn", "retinanet_resnet50_fpn_v2")


def _set_anchor_generator(arch: str, kwargs: dict, sizes) -> None:
    if not isinstance(sizes, (list, tuple)) or not sizes or not all(
            isinstance(s, (int, float)) and s > 0 for s in sizes):
        raise UsageError(f"anchor_sizes must be a non-empty list of positive sizes (one per FPN level), got {sizes!r}")
    if arch in _OWN_ANCHORS:
        raise UsageError(f"anchor_sizes is not supported for {arch}: torchvision's builder sets its own anchors "
                         "(fasterrcnn_mobilenet_v3_large_hires_fpn and the ResNet Faster R-CNNs take them)")
    if arch.startswith("fasterrcnn"):
        kwargs["rpn_anchor_generator"] = _anchor_generator(sizes)
    elif arch.startswith("retinanet"):  # RetinaNet: three octave scales per level, as torchvision's
        kwargs["anchor_generator"] = _anchor_generator(sizes, scales=(1.0, 2 ** (1 / 3), 2 ** (2 / 3)))
    else:
        raise UsageError(f"anchor_sizes is not supported for {arch} (FCOS is anchor-free)")


def _check_anchor_levels(model: nn.Module, spec: ModelSpec) -> None:
    """anchor_sizes has one size per feature level of the backbone (torchvision asserts it at the first step)."""
    from kdtrain.distill.levels import probe_levels

    levels = len(probe_levels(model.backbone)[0])
    sizes = spec.kwargs["anchor_sizes"]
    if len(sizes) != levels:
        raise UsageError(f"anchor_sizes={list(sizes)}: {spec.arch} has {levels} feature levels; give one size per "
                         f"level, {levels} sizes (e.g. {[16 * 2 ** i for i in range(levels)]})")


def check_weights_name(arch: str, name: Optional[str], flag: str) -> None:
    """UsageError unless ``name`` names torchvision weights of ``arch`` (checked before anything downloads)."""
    if name is None or arch not in _TORCHVISION_BUILDERS:
        return  # kdtrain's own compositions refuse detector weights when they are built
    weights = get_model_weights(_TORCHVISION_BUILDERS[arch])
    try:
        weights.verify(name)
    except (KeyError, ValueError):
        raise UsageError(f"{flag} {name}: not a weights name of {arch}; torchvision has DEFAULT, "
                         + ", ".join(w.name for w in weights)) from None


def torchvision_frozen_bn():
    from torchvision.ops import misc

    return misc.FrozenBatchNorm2d


def _replace_classifier(model: nn.Module, num_classes: int) -> None:
    if isinstance(model, detection.FasterRCNN):
        predictor = model.roi_heads.box_predictor
        if predictor.cls_score.out_features != num_classes:
            model.roi_heads.box_predictor = FastRCNNPredictor(predictor.cls_score.in_features, num_classes)
        return
    head = getattr(getattr(model, "head", None), "classification_head", None)
    # SSD's scoring head calls its class count num_columns.
    current = getattr(head, "num_classes", getattr(head, "num_columns", None))
    if current is not None and current != num_classes:
        raise UsageError(
            f"pretrained {type(model).__name__} has {current} classes but {num_classes} were asked; "
            "use --weights-backbone instead of --weights for a different label set"
        )


def detector_num_classes(model: nn.Module) -> int:
    """The classes the detector predicts, background included."""
    if isinstance(model, detection.FasterRCNN):
        return model.roi_heads.box_predictor.cls_score.out_features
    head = model.head.classification_head
    # RetinaNet and FCOS name it num_classes, SSD's scoring head num_columns.
    return head.num_classes if hasattr(head, "num_classes") else head.num_columns


def detector_family(model: nn.Module) -> str:
    """'two_stage' | 'retinanet' | 'fcos' (FGD's preset names) | 'ssd'."""
    if isinstance(model, detection.FasterRCNN):
        return "two_stage"
    if isinstance(model, detection.RetinaNet):
        return "retinanet"
    if isinstance(model, detection.FCOS):
        return "fcos"
    if isinstance(model, SSD):
        return "ssd"
    raise TypeError(f"unsupported detector {type(model).__name__}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_detector(path: str, map_location: Any = "cpu") -> tuple[nn.Module, ModelSpec, dict]:
    """Rebuild a detector from a kdtrain checkpoint (training or exported).

    Returns (model, spec, checkpoint). Only the student's own weights are loaded:
    distillation adaptation layers are never part of ``model_state``.
    """
    ckpt = ckpt_io.load(path, map_location)
    if not isinstance(ckpt, dict) or "model_spec" not in ckpt or "model_state" not in ckpt:
        raise UsageError(f"{path} is not a kdtrain checkpoint (keys model_spec and model_state are missing)")
    spec = ModelSpec.from_dict(ckpt["model_spec"])
    model = build_detector(spec, load_weights=False)  # the checkpoint holds every weight: nothing to download
    result = model.load_state_dict(ckpt["model_state"], strict=False)
    # A model trained from a pretrained backbone used FrozenBatchNorm2d, which has
    # no num_batches_tracked buffer; everything else must match exactly.
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise UsageError(
            f"{path}: weights do not match {spec.arch} (missing {missing[:5]}, unexpected {result.unexpected_keys[:5]})"
        )
    return model, spec, ckpt
