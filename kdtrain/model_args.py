"""The --model-arg names a detector accepts: exactly the keyword arguments its constructor takes.

Unknown names must be refused here: FasterRCNN, RetinaNet and FCOS hand their ``**kwargs`` to
GeneralizedRCNNTransform, which ignores what it does not know, so a typo would train silently without it.
"""

from __future__ import annotations

import inspect

from torchvision.models import detection
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from kdtrain.architectures import FIXED_SIZE_DETECTORS, TORCHVISION_DETECTORS
from kdtrain.errors import UsageError

KDTRAIN_ARGS = ("anchor_sizes",)  # kdtrain's own (kdtrain/models.py turns it into an anchor generator)
# Passed by kdtrain itself, from their own flags.
_SET_BY_KDTRAIN = {"self", "backbone", "num_classes", "weights", "weights_backbone"}
# SSD builds its transform from its fixed size (set by --min-size): these would clash or be ignored.
_FIXED_SIZE_OWN = {"size", "min_size", "max_size", "fixed_size", "size_divisible"}


def _keywords(fn) -> set[str]:
    return {name for name, p in inspect.signature(fn).parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _detector_class(arch: str):
    for prefix, cls in (("fasterrcnn", detection.FasterRCNN), ("retinanet", detection.RetinaNet),
                        ("fcos", detection.FCOS), ("ssd", SSD)):
        if arch.startswith(prefix):
            return cls
    raise UsageError(f"unknown architecture {arch!r}")


def accepted_model_args(arch: str) -> set[str]:
    names = _keywords(_detector_class(arch).__init__) | _keywords(GeneralizedRCNNTransform.__init__)
    if arch in TORCHVISION_DETECTORS:  # its builder's own options (progress, trainable_backbone_layers)
        names |= _keywords(getattr(detection, arch))
    if arch in FIXED_SIZE_DETECTORS:
        names -= _FIXED_SIZE_OWN
    return (names | set(KDTRAIN_ARGS)) - _SET_BY_KDTRAIN


def check_model_args(arch: str, kwargs: dict) -> None:
    unknown = sorted(set(kwargs) - accepted_model_args(arch))
    if unknown:
        raise UsageError(f"--model-arg {', '.join(unknown)}: not an argument of {arch} "
                         f"({_detector_class(arch).__name__}); it accepts: "
                         f"{', '.join(sorted(accepted_model_args(arch)))}")
