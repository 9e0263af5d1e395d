"""MapsDistiller: the weighted losses of paired feature levels, from maps the caller computes (docs/math.md
§10). kdops.nn.FeatureDistiller records the maps of two nn.Modules with hooks and distils them with one."""

import math
from collections.abc import Mapping
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch.nn.functional as F
from torch import Tensor, nn

from kdops.nn import pairing
from kdops.nn.channel import CWDLoss, PKDLoss
from kdops.nn.fgd import FGDLoss
from kdops.nn.hint import HintLoss
from kdops.nn.mgd import MGDLoss
from kdops.nn.pairing import Level, Pair
from kdops.ops.box_masks import box_masks

# Options each loss kind takes (the rest of its module's constructor is fixed by the pair).
OPTIONS = {
    "imitation": ("loss", "normalize", "adapt", "mask"),
    "fgd": ("family", "temperature", "alpha", "beta", "gamma", "lambda_"),
    "cwd": ("tau",),
    "pkd": (),
    "mgd": ("family", "alpha", "lambda_"),
}
REDUCTIONS = ("sum", "mean")
ALIGNS = ("resize", "crop")  # how maps of different (H, W) are matched: match_size or crop_to_common

LossSpec = Union[str, Tuple[str, dict]]


def match_size(student: Tensor, teacher: Tensor) -> Tensor:
    """The student's map resized bilinearly to the teacher's (H, W) when they differ (a low-resolution
    student, a ceil-rounded level). Resizing before a 1x1 adaptation conv equals resizing after it: the
    conv is affine per pixel and each bilinear output is a convex combination of input pixels."""
    if student.shape[-2:] != teacher.shape[-2:]:
        student = F.interpolate(student, size=teacher.shape[-2:], mode="bilinear", align_corners=False)
    return student


def crop_to_common(student: Tensor, teacher: Tensor) -> Tuple[Tensor, Tensor]:
    """Both maps cut to their common top-left (H, W): for maps of one stride in input pixels whose inputs
    were padded at the bottom and right to different sizes (a low-resolution student's batch), cell (i, j)
    of both sees the same pixels, and the cells past the smaller map are padding in the larger."""
    h, w = min(student.shape[-2], teacher.shape[-2]), min(student.shape[-1], teacher.shape[-1])
    return student[..., :h, :w], teacher[..., :h, :w]


def check_choices(**choices) -> None:
    allowed = {"pair_by": pairing.PAIR_BY, "tie": pairing.TIES, "reduction": REDUCTIONS, "align": ALIGNS}
    for arg, value in choices.items():
        if value not in allowed[arg]:
            raise ValueError(f"FeatureDistiller: {arg} must be one of {allowed[arg]}, got {value!r}")


def _loss_spec(spec, arg: str) -> Tuple[str, dict]:
    kind, options = (spec, {}) if isinstance(spec, str) else tuple(spec) if isinstance(spec, tuple) else (None, None)
    if kind not in OPTIONS or not isinstance(options, dict):
        raise ValueError(f"FeatureDistiller: {arg} must be one of {tuple(OPTIONS)} or (kind, options dict), "
                         f"got {spec!r}")
    unknown = [k for k in options if k not in OPTIONS[kind]]
    if unknown:
        raise ValueError(f"FeatureDistiller: {arg}: {kind} takes the options {OPTIONS[kind]}, got {unknown}")
    if options.get("mask", "none") not in ("none", "boxes"):
        raise ValueError(f"FeatureDistiller: {arg}: mask must be 'none' or 'boxes', got {options['mask']!r}")
    return kind, dict(options)


def loss_specs(loss, student_levels: List[str]) -> Dict[str, Tuple[str, dict]]:
    """{student level: (kind, options)} from `loss`: one spec for every level, or a dict by level."""
    if isinstance(loss, dict):
        unknown = [k for k in loss if k not in student_levels]
        if unknown:
            raise ValueError(f"FeatureDistiller: loss names {unknown}, which are not student levels {student_levels}")
        return {level: _loss_spec(loss[level], f"loss[{level!r}]") for level in student_levels if level in loss}
    spec = _loss_spec(loss, "loss")
    return {level: spec for level in student_levels}


def needs_boxes(kind: str, options: dict) -> bool:
    return kind == "fgd" or options.get("mask", "none") == "boxes"


def _build(kind: str, options: dict, s_channels: int, t_channels: int, backend) -> Tuple[nn.Module, nn.Module]:
    """The pair's kdops.nn loss and the adaptation the loss does not do itself."""
    options = dict(options)
    if kind == "imitation":
        options.pop("mask", None)
        return HintLoss(s_channels, t_channels, backend=backend, **options), nn.Identity()
    if kind in ("fgd", "mgd"):  # their own align conv, and presets per detector family
        cls = FGDLoss if kind == "fgd" else MGDLoss
        family = options.pop("family", None)
        if family is None:
            return cls(s_channels, t_channels, backend=backend, **options), nn.Identity()
        return cls.preset(family, s_channels, t_channels, backend=backend, **options), nn.Identity()
    adapt = nn.Conv2d(s_channels, t_channels, kernel_size=1) if s_channels != t_channels else nn.Identity()
    if kind == "cwd":
        return CWDLoss(backend=backend, **options), adapt
    return PKDLoss(backend=backend), adapt


class MapsDistiller(nn.Module):
    """The weighted loss of each pair of feature levels, from {level: map} dicts the caller computes (what
    FeatureDistiller.from_levels returns; see FeatureDistiller for the losses, weights and boxes).

    Args:
        student_levels, teacher_levels: each side's {level: Level(channels, stride, size)}.
        pairs: (student level, teacher level) of each pair, e.g. from kdops.nn.pairing.pair.
        loss, weights, reduction, backend: as FeatureDistiller's.
        align: when a pair's maps differ in (H, W): "resize" the student's to the teacher's (match_size), or
            "crop" both to their common top-left region (crop_to_common: maps of one stride in input pixels
            from inputs padded to different sizes, as a detector's transform pads a low-resolution batch).

    `pairs[i]`'s loss is `losses[i]` and its adaptation `adapt[i]`: they are the parameters.
    """

    def __init__(self, student_levels: Dict[str, Level], teacher_levels: Dict[str, Level],
                 pairs: Sequence[Tuple[str, str]], *, loss: Union[LossSpec, Dict[str, LossSpec]] = "imitation",
                 weights: Union[float, Dict[str, float]] = 1.0, reduction: str = "sum",
                 backend: Optional[str] = None, align: str = "resize"):
        super().__init__()
        check_choices(reduction=reduction, align=align)
        self.align = align
        specs = loss_specs(loss, list(student_levels))
        unspecified = [s for s, _ in pairs if s not in specs]
        if unspecified:
            raise ValueError(f"FeatureDistiller: loss gives no kind for the paired student levels {unspecified} "
                             f"(paired: {[s for s, _ in pairs]})")
        self.pairs: List[Pair] = [Pair(s, t, teacher_levels[t].stride, *specs[s]) for s, t in pairs]
        self.weights = self._weights(weights)
        self.reduction, self.backend = reduction, backend
        self.losses = nn.ModuleList()
        self.adapt = nn.ModuleList()
        for pair in self.pairs:
            module, adapt = _build(pair.kind, pair.options, student_levels[pair.student].channels,
                                   teacher_levels[pair.teacher].channels, backend)
            self.losses.append(module)
            self.adapt.append(adapt)

    @classmethod
    def from_levels(cls, student_levels: Mapping, teacher_levels: Mapping, *,
                    loss: Union[LossSpec, Dict[str, LossSpec]] = "imitation",
                    weights: Union[float, Dict[str, float]] = 1.0, pair_by: str = "stride", tie: str = "in_order",
                    reduction: str = "sum", backend: Optional[str] = None) -> "MapsDistiller":
        """A distiller without models or hooks, for maps the caller computes: {level name: Level} of each
        side (or a tuple (channels, stride[, size]), or the channel count alone for pair_by="order"), in
        the order the levels pair in. Its losses come from `distil(student_maps, teacher_maps, boxes)`."""
        check_choices(pair_by=pair_by, tie=tie, reduction=reduction)
        levels = {}
        for side, given in (("student", student_levels), ("teacher", teacher_levels)):
            if not isinstance(given, Mapping) or not given:
                raise TypeError(f"FeatureDistiller.from_levels: the {side}'s levels must be a non-empty dict "
                                f"{{name: Level}}, got {given!r}")
            levels[side] = {name: _as_level(v, side, name) for name, v in given.items()}
        boxes = any(needs_boxes(kind, options) for kind, options in loss_specs(loss, list(levels["student"])).values())
        for side, side_levels in levels.items():
            need = {"stride": "pair_by='stride'" if pair_by == "stride" else
                    "the boxes of fgd or masked imitation" if boxes and side == "teacher" else None,
                    "size": "pair_by='size'" if pair_by == "size" else None}
            for name, level in side_levels.items():
                for field, why in need.items():
                    if why and getattr(level, field) is None:
                        raise ValueError(f"FeatureDistiller.from_levels: the {side}'s level {name!r} has no {field}; "
                                         f"{why} needs one")
        pairs = pairing.pair(levels["student"], levels["teacher"], pair_by, tie)
        return cls(levels["student"], levels["teacher"], pairs, loss=loss, weights=weights, reduction=reduction,
                   backend=backend)

    def _weights(self, weights) -> List[float]:
        if isinstance(weights, dict):
            paired = [p.student for p in self.pairs]
            unknown = [k for k in weights if k not in paired]
            if unknown:
                raise ValueError(f"FeatureDistiller: weights names {unknown}, which are not paired student levels "
                                 f"{paired}")
            return [float(weights.get(p.student, 1.0)) for p in self.pairs]
        if isinstance(weights, bool) or not isinstance(weights, (int, float)):
            raise TypeError(f"FeatureDistiller: weights must be a float or a dict student level -> float, "
                            f"got {weights!r}")
        return [float(weights)] * len(self.pairs)

    def forward(self, student_maps: Optional[Mapping[str, Tensor]] = None,
                teacher_maps: Optional[Mapping[str, Tensor]] = None,
                boxes: Optional[Sequence[Tensor]] = None) -> Dict[str, Tensor]:
        """`distil` (so that DDP(distiller)(student_maps, teacher_maps, boxes) all-reduces its gradients)."""
        if student_maps is None or teacher_maps is None:
            raise RuntimeError("FeatureDistiller.forward: this distiller was built by from_levels and has no hooks; "
                               "pass the maps to distil()")
        return self.distil(student_maps, teacher_maps, boxes)

    def distil(self, student_maps: Mapping[str, Tensor], teacher_maps: Mapping[str, Tensor],
               boxes: Optional[Sequence[Tensor]] = None) -> Dict[str, Tensor]:
        """The weighted loss of each pair, keyed by the student level, and "total" (their sum or mean,
        `reduction`), from {level: (N, C, H, W) map} of each side. The teacher's maps are constants
        (detached here). boxes: one (K_i, 4) tensor per image in the teacher's input pixels, for the
        pairs whose loss needs them."""
        out: Dict[str, Tensor] = {}
        for i, pair in enumerate(self.pairs):
            s = _level_map(student_maps, pair.student, "student")
            t = _level_map(teacher_maps, pair.teacher, "teacher").detach()
            if s.shape[0] != t.shape[0]:
                raise ValueError(f"FeatureDistiller: student level {pair.student!r} has batch size {s.shape[0]} "
                                 f"but teacher level {pair.teacher!r} has {t.shape[0]}; run both on the same "
                                 "inputs")
            if self.align == "crop":
                s, t = crop_to_common(s, t)
            elif pair.kind != "pkd":  # PKDLoss resizes the adapted map itself
                s = match_size(s, t)
            s = self.adapt[i](s)
            fn = self.losses[i]
            if pair.kind == "fgd":
                value = fn(s, t, self._level_boxes(boxes, pair, s.shape[0]))
            elif pair.kind == "imitation" and needs_boxes(pair.kind, pair.options):
                fg, _ = box_masks(self._level_boxes(boxes, pair, s.shape[0]), tuple(t.shape[-2:]),
                                  backend=self.backend)
                value = fn(s, t, fg > 0)
            else:
                value = fn(s, t)
            out[pair.student] = value if self.weights[i] == 1.0 else self.weights[i] * value
        total = sum(out.values())
        out["total"] = total / len(self.pairs) if self.reduction == "mean" else total
        return out

    @staticmethod
    def _level_boxes(boxes, pair: Pair, batch: int) -> List[Tensor]:
        if not isinstance(boxes, (list, tuple)) or len(boxes) != batch:
            got = f"{type(boxes).__name__} of length {len(boxes)}" if isinstance(boxes, (list, tuple)) else repr(boxes)
            raise ValueError(f"FeatureDistiller: the {pair.kind} loss of level {pair.student!r} needs boxes=, one "
                             f"(K_i, 4) tensor per image ({batch} images) in input pixels, got {got}")
        return [b / pair.stride for b in boxes]

    def extra_repr(self) -> str:
        return "pairs=[" + ", ".join(f"{p.student}->{p.teacher} {p.kind}" for p in self.pairs) + "]"


def _level_map(maps: Mapping[str, Tensor], level: str, side: str) -> Tensor:
    if not isinstance(maps, Mapping) or level not in maps:
        keys = list(maps) if isinstance(maps, Mapping) else type(maps).__name__
        raise KeyError(f"FeatureDistiller.distil: no {side} map for level {level!r} (got {keys})")
    return maps[level]


def _as_level(value, side: str, name: str) -> Level:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    if isinstance(value, tuple) and 1 <= len(value) <= 3:
        level = Level(*value)
        if isinstance(level.channels, int) and not isinstance(level.channels, bool) and level.channels >= 1 \
                and (level.stride is None or (isinstance(level.stride, (int, float)) and 0 < level.stride < math.inf)) \
                and (level.size is None or len(level.size) == 2):
            if name == "total":
                raise ValueError("FeatureDistiller: a level cannot be named 'total' (the key of the losses' sum)")
            return Level(level.channels, None if level.stride is None else float(level.stride),
                         None if level.size is None else tuple(int(n) for n in level.size))
    raise TypeError(f"FeatureDistiller.from_levels: the {side}'s level {name!r} must be a Level(channels, stride, "
                    f"size), a tuple of them or a channel count, got {value!r}")
