"""Feature distillation for any nn.Module: forward hooks record the maps, kdops.nn losses compare them
(docs/math.md §10)."""

import math
import weakref
from collections.abc import Mapping
from typing import Callable, Dict, Hashable, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdops.nn.channel import CWDLoss, PKDLoss
from kdops.nn.fgd import FGDLoss
from kdops.nn.hint import HintLoss
from kdops.ops.box_masks import box_masks

# Options each loss kind takes (the rest of its module's constructor is fixed by the pair).
OPTIONS = {
    "imitation": ("loss", "normalize", "adapt", "mask"),
    "fgd": ("family", "temperature", "alpha", "beta", "gamma", "lambda_"),
    "cwd": ("tau",),
    "pkd": (),
}
PAIR_BY = ("stride", "size", "order")
TIES = ("in_order", "first")
REDUCTIONS = ("sum", "mean")

Selector = Union[str, Sequence[str], Callable[[str, nn.Module], bool]]
LossSpec = Union[str, Tuple[str, dict]]


class Pair(NamedTuple):
    """One distilled pair of levels: names as selected ("layer3", "backbone:0"), the teacher level's
    stride in input pixels (None when it was not needed), the loss kind and its options."""
    student: str
    teacher: str
    stride: Optional[float]
    kind: str
    options: dict


class Level(NamedTuple):
    """A level given to `FeatureDistiller.from_levels`: its channel count, its stride in the teacher's
    input pixels (for pair_by="stride" and for the boxes of fgd and masked imitation) and its (H, W)
    (for pair_by="size")."""
    channels: int
    stride: Optional[float] = None
    size: Optional[Tuple[int, int]] = None


class _Stop(Exception):
    """Raised by a hook once every recorded module of a model has run: the rest of its forward is not needed."""


class _Recorder:
    """The maps one model's hooks record. Holds no reference to the distiller, so a dropped distiller
    can be collected (its finalizer then removes the hooks)."""

    def __init__(self, side: str, unwrapped: nn.Module):
        self.side, self.model = side, unwrapped
        self.maps: Dict[str, Tensor] = {}
        self.modules: Dict[str, List[Tuple[str, Optional[str]]]] = {}  # module path -> [(level, dict key)]
        self.stop_after_all = False  # set while the distiller runs the model only for its maps
        self.fired: set = set()

    def hook(self, path: str):
        levels, maps, side, detach = self.modules[path], self.maps, self.side, self.side == "teacher"

        def record(module, args, output):
            for level, key in levels:
                if key is not None and not (isinstance(output, Mapping) and key in output):
                    raise ValueError(_no_key(side, path, output, key))
                value = output if key is None else output[key]
                if not isinstance(value, Tensor) or value.dim() != 4:
                    raise TypeError(f"FeatureDistiller: {side} level {level!r} must be an (N, C, H, W) tensor, "
                                    f"got {_describe(value)}")
                # The teacher is a constant of every loss.
                maps[level] = value.detach() if detach else value
            if self.stop_after_all:
                self.fired.add(path)
                if len(self.fired) == len(self.modules):
                    raise _Stop
        return record

    def run(self, *inputs, **kwargs) -> None:
        """Run the model until every hooked module has fired, for the maps only."""
        self.fired, self.stop_after_all = set(), True
        try:
            self.model(*inputs, **kwargs)
        except _Stop:
            pass
        finally:
            self.stop_after_all = False


class FeatureDistiller(nn.Module):
    """Distil a teacher's intermediate feature maps into a student's, for any pair of nn.Modules.

    Forward hooks on the named modules record their outputs: the models' code is unchanged. The
    student runs in its own training loop as usual; `teacher_forward(*inputs)` runs the teacher
    (frozen, in eval mode, under no_grad) only as far as the recorded modules; then `distiller(boxes=...)`
    returns the weighted loss of each pair and their "total", and forgets the recorded maps.

        distiller = FeatureDistiller(student, teacher, ["layer2", "layer3"], example_inputs=(images,))
        optimizer = torch.optim.SGD([*student.parameters(), *distiller.parameters()], lr=0.01)
        task_loss = criterion(student(images), labels)      # the hooks record the student's maps
        distiller.teacher_forward(images)
        (task_loss + distiller()["total"]).backward()

    Only the adaptation layers and the losses' own layers (FGD's GcBlocks) are parameters of the
    distiller: add them to the optimizer. Student and teacher are not submodules (not in its
    state_dict nor moved by its .to()).

    Levels: a module path of `model.named_modules()` ("layer3") whose output is an (N, C, H, W)
    tensor, or a module returning a dict of maps: "backbone" takes every entry (levels
    "backbone:0", "backbone:1", ... for torchvision's FPN), "backbone:0" one; "" is the model itself
    (a backbone returning a dict gives the levels "0", "1", ...). A callable
    `select(path, module) -> bool` picks modules instead of naming them.

    Pairing (`pair_by`): "stride" pairs each student level with the teacher level of the same stride;
    student levels without one are left out (see `pairs`). When several levels share a stride, `tie`
    "in_order" pairs the k-th student level of it with the k-th teacher level of it (or its last),
    "first" every student level of it with the first teacher level of it. "size" does the same by
    (H, W). "order" pairs the two lists in order. One probe forward of each model on `example_inputs`
    (eval mode, no_grad) finds the channels, sizes and strides: stride = image size / map size, to the
    nearest power of two when the map was ceil-rounded (a 100 px side at stride 8 has 13 cells).
    Strides are in the teacher's input pixels: a student on half-size inputs (`teacher_example_inputs`
    at full size, Chen 2017's low-resolution student) pairs its stride-s levels with the teacher's
    stride-2s levels.

    Adaptation: a student map of another size than its teacher's is resized bilinearly to it (PKDLoss
    resizes its input itself, after the adaptation, as mmrazor's does); a 1x1 conv maps the student's
    channels to the teacher's (HintLoss' own `adapt`, FGDLoss' own `align`, `adapt[i]` for CWD and PKD,
    which only have one when the channel counts differ).

    Loss per pair (`loss`): a kind, or (kind, options), for every pair, or a dict level -> either, by
    student level name:
        "imitation": kdops.nn.HintLoss; options loss, normalize, adapt, and mask="boxes" to imitate
            only inside the boxes (0/1 mask of kdops.box_masks' foreground), default "none".
        "fgd": kdops.nn.FGDLoss; options family ("two_stage", "retinanet", "fcos": FGDLoss.preset)
            and the hyper-parameters temperature, alpha, beta, gamma, lambda_.
        "cwd": kdops.nn.CWDLoss; option tau.        "pkd": kdops.nn.PKDLoss.
    `weights`: one float for every pair, or a dict student level -> float (default 1.0). `reduction`:
    "total" is the "sum" of the weighted pair losses or their "mean".

    Maps the training loop already has (a trainer that runs the backbones itself):
    `FeatureDistiller.from_levels(student_levels, teacher_levels, ...)` builds the same pairs,
    adaptation layers and losses from each side's {level: Level(channels, stride, size)}, without
    models or hooks, and `distiller.distil(student_maps, teacher_maps, boxes)` returns the losses of
    two {level: map} dicts. The hook path computes its losses with `distil` too.

    Boxes (FGD, imitation with mask="boxes"): one (K_i, 4) tensor per image, (x1, y1, x2, y2) in the
    pixels of the teacher's input as its layers see it (for a torchvision detector: after its
    transform resized the image), on the maps' device; each pair divides them by its teacher level's
    stride.

    DDP: hooks on the inner modules fire whether the student is wrapped or not (a wrapped student,
    DDP or torch.compile's, is unwrapped here). The distiller's parameters need their own gradient
    all-reduce: wrap it too, DDP(distiller), and call that for the loss. torch.compile(student):
    compile after building the distiller, so the hooks are in place when it traces.

    `remove()` (or leaving a `with` block) removes every hook; the recorded maps are dropped after
    each loss and by `clear()`.

    Args:
        student, teacher: the models (the teacher is frozen and put in eval mode here).
        student_layers: the student's levels (names, one name, or a callable).
        teacher_layers: the teacher's, the same as the student's when None.
        example_inputs: positional arguments of one forward of both models (a tuple, or one tensor).
        teacher_example_inputs: the teacher's, when it sees other inputs than the student.
        loss, weights: see above.
        pair_by: "stride", "size" or "order"; tie: "in_order" or "first"; reduction: "sum" or "mean".
        image_size: (H, W) of the teacher's input as its layers see it in the probe; default: the last
            two dims of the first tensor in its example inputs with >= 3 dims. Set it when the model
            resizes its input.
        backend: kdops backend of every loss, None for automatic.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, student_layers: Selector,
                 teacher_layers: Optional[Selector] = None, *, example_inputs, teacher_example_inputs=None,
                 loss: Union[LossSpec, Dict[str, LossSpec]] = "imitation",
                 weights: Union[float, Dict[str, float]] = 1.0, pair_by: str = "stride", tie: str = "in_order",
                 reduction: str = "sum", image_size: Optional[Sequence[int]] = None, backend: Optional[str] = None):
        super().__init__()
        _check_choices(pair_by, tie, reduction)
        student, teacher = _unwrap(student), _unwrap(teacher)
        if student is teacher:
            raise ValueError("FeatureDistiller: student and teacher are the same module; the teacher's hooks would "
                             "overwrite the student's maps (distil from a frozen copy)")
        example_inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        if teacher_example_inputs is None:
            teacher_example_inputs = example_inputs
        elif not isinstance(teacher_example_inputs, tuple):
            teacher_example_inputs = (teacher_example_inputs,)
        # Not submodules: a list keeps them out of parameters(), state_dict() and .to().
        self._models = [student, teacher]
        self._student = _Recorder("student", student)
        self._teacher = _Recorder("teacher", teacher)
        s_levels, s_shapes = self._probe(self._student, _select(student, student_layers, "student_layers"),
                                         example_inputs)
        t_levels, t_shapes = self._probe(
            self._teacher, _select(teacher, student_layers if teacher_layers is None else teacher_layers,
                                   "teacher_layers"), teacher_example_inputs)
        teacher.eval()
        teacher.requires_grad_(False)
        if image_size is None:
            image_size = _image_size(teacher_example_inputs)
        specs = self._loss_specs(loss, s_levels)
        needs_strides = pair_by == "stride" or any(_needs_boxes(kind, opts) for kind, opts in specs.values())
        t_strides = {level: self._stride(image_size, t_shapes[level], "teacher", level, needs_strides)
                     for level in t_levels}
        s_strides = {level: self._stride(image_size, s_shapes[level], "student", level, pair_by == "stride")
                     for level in s_levels}
        self._setup({lv: Level(s_shapes[lv][0], s_strides[lv], s_shapes[lv][1:]) for lv in s_levels},
                    {lv: Level(t_shapes[lv][0], t_strides[lv], t_shapes[lv][1:]) for lv in t_levels},
                    specs, weights, pair_by, tie, reduction, backend)
        # Hook only the modules of paired levels.
        used = {p.student for p in self.pairs}, {p.teacher for p in self.pairs}
        handles = []
        for recorder, keep in zip((self._student, self._teacher), used):
            kept = {path: [lv for lv in levels if lv[0] in keep] for path, levels in recorder.modules.items()}
            recorder.modules = {path: levels for path, levels in kept.items() if levels}
            named = dict(recorder.model.named_modules())
            handles += [named[path].register_forward_hook(recorder.hook(path)) for path in recorder.modules]
        self._finalizer = weakref.finalize(self, _remove_all, handles)

    @classmethod
    def from_levels(cls, student_levels: Mapping, teacher_levels: Mapping, *,
                    loss: Union[LossSpec, Dict[str, LossSpec]] = "imitation",
                    weights: Union[float, Dict[str, float]] = 1.0, pair_by: str = "stride", tie: str = "in_order",
                    reduction: str = "sum", backend: Optional[str] = None) -> "FeatureDistiller":
        """A distiller without models or hooks, for maps the caller computes: {level name: Level} of each
        side (or a tuple (channels, stride[, size]), or the channel count alone for pair_by="order"), in
        the order the levels pair in. Its losses come from `distil(student_maps, teacher_maps, boxes)`."""
        _check_choices(pair_by, tie, reduction)
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._models = [None, None]
        self._student = self._teacher = None
        self._finalizer = None
        s_levels = {name: _as_level(v, "student", name) for name, v in _level_items(student_levels, "student")}
        t_levels = {name: _as_level(v, "teacher", name) for name, v in _level_items(teacher_levels, "teacher")}
        specs = cls._loss_specs(loss, list(s_levels))
        boxes = any(_needs_boxes(kind, opts) for kind, opts in specs.values())
        for side, levels in (("student", s_levels), ("teacher", t_levels)):
            need = {"stride": "pair_by='stride'" if pair_by == "stride" else
                    "the boxes of fgd or masked imitation" if boxes and side == "teacher" else None,
                    "size": "pair_by='size'" if pair_by == "size" else None}
            for name, level in levels.items():
                for field, why in need.items():
                    if why and getattr(level, field) is None:
                        raise ValueError(f"FeatureDistiller.from_levels: the {side}'s level {name!r} has no {field}; "
                                         f"{why} needs one")
        self._setup(s_levels, t_levels, specs, weights, pair_by, tie, reduction, backend)
        return self

    def _setup(self, s_levels: Dict[str, Level], t_levels: Dict[str, Level], specs, weights, pair_by: str,
               tie: str, reduction: str, backend) -> None:
        """Pairs, weights, losses and adaptation layers: what both constructors share."""
        matched = _pair(s_levels, t_levels, pair_by, tie)
        if not matched:
            raise ValueError(f"FeatureDistiller: no student level pairs with a teacher level by {pair_by}: student "
                             f"{_levels_info(s_levels)}, teacher {_levels_info(t_levels)}")
        unspecified = [s for s, _ in matched if s not in specs]
        if unspecified:
            raise ValueError(f"FeatureDistiller: loss gives no kind for the paired student levels {unspecified} "
                             f"(paired: {[s for s, _ in matched]})")
        self.pairs: List[Pair] = [Pair(s, t, t_levels[t].stride, *specs[s]) for s, t in matched]
        self.weights = self._weights(weights)
        self.reduction, self.backend = reduction, backend
        self.losses = nn.ModuleList()
        self.adapt = nn.ModuleList()
        for pair in self.pairs:
            module, adapt = _build(pair.kind, pair.options, s_levels[pair.student].channels,
                                   t_levels[pair.teacher].channels, backend)
            self.losses.append(module)
            self.adapt.append(adapt)

    # ---- training-step API ------------------------------------------------------------------------
    @property
    def teacher(self) -> nn.Module:
        return self._models[1]

    @property
    def student(self) -> nn.Module:
        return self._models[0]

    @torch.no_grad()
    def teacher_forward(self, *inputs, **kwargs) -> None:
        """Run the teacher on these inputs, in eval mode and under no_grad, and stop it once
        every recorded module has run (a detector's heads and post-processing are skipped). Returns
        nothing; to use the teacher's outputs too, call it yourself under no_grad: the hooks record."""
        self._check_hooked("teacher_forward")
        if self.teacher.training:
            self.teacher.eval()
        self._teacher.run(*inputs, **kwargs)

    def forward(self, boxes: Optional[Sequence[Tensor]] = None) -> Dict[str, Tensor]:
        """`distil` on the recorded maps. Needs a student forward and a teacher_forward since the last
        call; drops the recorded maps."""
        self._check_hooked("forward")
        try:
            for pair in self.pairs:
                _recorded(self._student.maps, pair.student, "student", "run the student forward")
                _recorded(self._teacher.maps, pair.teacher, "teacher", "call teacher_forward")
            return self.distil(self._student.maps, self._teacher.maps, boxes)
        finally:
            self.clear()

    def distil(self, student_maps: Mapping[str, Tensor], teacher_maps: Mapping[str, Tensor],
               boxes: Optional[Sequence[Tensor]] = None) -> Dict[str, Tensor]:
        """The weighted loss of each pair, keyed by the student level, and "total" (their sum or mean,
        `reduction`), from {level: (N, C, H, W) map} of each side. The teacher's maps are constants
        (detached here); boxes as for forward."""
        out: Dict[str, Tensor] = {}
        for i, pair in enumerate(self.pairs):
            s = _level_map(student_maps, pair.student, "student")
            t = _level_map(teacher_maps, pair.teacher, "teacher").detach()
            if s.shape[0] != t.shape[0]:
                raise ValueError(f"FeatureDistiller: student level {pair.student!r} has batch size {s.shape[0]} "
                                 f"but teacher level {pair.teacher!r} has {t.shape[0]}; run both on the same "
                                 "inputs")
            if pair.kind != "pkd":  # PKDLoss resizes the adapted map itself
                s = match_size(s, t)
            s = self.adapt[i](s)
            fn = self.losses[i]
            if pair.kind == "fgd":
                value = fn(s, t, self._level_boxes(boxes, pair, s.shape[0]))
            elif pair.kind == "imitation" and _needs_boxes(pair.kind, pair.options):
                fg, _ = box_masks(self._level_boxes(boxes, pair, s.shape[0]), tuple(t.shape[-2:]),
                                  backend=self.backend)
                value = fn(s, t, fg > 0)
            else:
                value = fn(s, t)
            out[pair.student] = value if self.weights[i] == 1.0 else self.weights[i] * value
        total = sum(out.values())
        out["total"] = total / len(self.pairs) if self.reduction == "mean" else total
        return out

    def clear(self) -> None:
        """Drop the recorded maps (and the student's graph they hold)."""
        if self._student is None:  # from_levels: nothing is recorded
            return
        self._student.maps.clear()
        self._teacher.maps.clear()

    def remove(self) -> None:
        """Remove every hook and drop the recorded maps."""
        if self._finalizer is not None:
            self._finalizer()
        self.clear()

    def __enter__(self) -> "FeatureDistiller":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def extra_repr(self) -> str:
        return "pairs=[" + ", ".join(f"{p.student}->{p.teacher} {p.kind}" for p in self.pairs) + "]"

    # ---- construction -----------------------------------------------------------------------------
    @staticmethod
    def _probe(recorder: _Recorder, specs: List[Tuple[str, Optional[str]]], example_inputs: tuple):
        """The levels in selection order and their (C, H, W), from one forward in eval mode under no_grad
        (a whole-dict selection such as "backbone" becomes one level per key); fills recorder.modules."""
        model, raw = recorder.model, {}
        named = dict(model.named_modules())
        paths = list(dict.fromkeys(path for path, _ in specs))

        def keep(path):
            def hook(module, args, output):
                raw[path] = output
                if len(raw) == len(paths):
                    raise _Stop
            return hook

        handles = [named[path].register_forward_hook(keep(path)) for path in paths]
        modes = [(m, m.training) for m in model.modules()]  # restored one by one: parts may be frozen in eval
        model.eval()  # leave BatchNorm statistics alone
        try:
            with torch.no_grad():
                model(*example_inputs)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
            for m, training in modes:
                m.training = training
        missing = [path for path in paths if path not in raw]
        if missing:
            raise ValueError(f"FeatureDistiller: the {recorder.side}'s modules {missing} did not run on example_inputs")
        levels, shapes = [], {}
        for path, key in specs:
            out = raw[path]
            keys = list(out) if key is None and isinstance(out, Mapping) else [key]
            for k in keys:
                level = path if k is None else f"{path}:{k}" if path else k  # "" is the model itself
                if k is not None and not (isinstance(out, Mapping) and k in out):
                    raise ValueError(_no_key(recorder.side, path, out, k))
                value = out if k is None else out[k]
                if not isinstance(value, Tensor) or value.dim() != 4:
                    raise TypeError(f"FeatureDistiller: the {recorder.side}'s level {level!r} must be an (N, C, H, W) "
                                    f"tensor or a dict of them, got {_describe(value)}")
                if level in shapes:
                    raise ValueError(f"FeatureDistiller: the {recorder.side}'s level {level!r} is selected twice")
                if level == "total":
                    raise ValueError("FeatureDistiller: a level cannot be named 'total' (the key of the losses' sum)")
                levels.append(level)
                shapes[level] = tuple(value.shape[1:])
                recorder.modules.setdefault(path, []).append((level, k))
        return levels, shapes

    @staticmethod
    def _stride(image_size, shape, side: str, level: str, needed: bool) -> Optional[float]:
        stride = _stride_of(image_size, shape[1:])
        if stride is None and needed:
            raise ValueError(f"FeatureDistiller: the {side}'s level {level!r} is {shape[1]}x{shape[2]} on a "
                             f"{image_size[0]}x{image_size[1]} input: no whole stride. Pass image_size= (the size "
                             "the layers see, e.g. after the model resizes its input), or pair_by='size'/'order' "
                             "with a loss that needs no boxes")
        return stride

    @staticmethod
    def _loss_specs(loss, s_levels: List[str]) -> Dict[str, Tuple[str, dict]]:
        if isinstance(loss, dict):
            unknown = [k for k in loss if k not in s_levels]
            if unknown:
                raise ValueError(f"FeatureDistiller: loss names {unknown}, which are not student levels {s_levels}")
            return {level: _loss_spec(loss[level], f"loss[{level!r}]") for level in s_levels if level in loss}
        spec = _loss_spec(loss, "loss")
        return {level: spec for level in s_levels}

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

    def _level_boxes(self, boxes, pair: Pair, batch: int) -> List[Tensor]:
        if not isinstance(boxes, (list, tuple)) or len(boxes) != batch:
            got = f"{type(boxes).__name__} of length {len(boxes)}" if isinstance(boxes, (list, tuple)) else repr(boxes)
            raise ValueError(f"FeatureDistiller: the {pair.kind} loss of level {pair.student!r} needs boxes=, one "
                             f"(K_i, 4) tensor per image ({batch} images) in input pixels, got {got}")
        return [b / pair.stride for b in boxes]

    def _check_hooked(self, what: str) -> None:
        if self._finalizer is None:
            raise RuntimeError(f"FeatureDistiller.{what}: this distiller was built by from_levels and has no hooks; "
                               "pass the maps to distil()")
        if not self._finalizer.alive:
            raise RuntimeError(f"FeatureDistiller.{what}: the hooks were removed (remove() or the end of a with block)")


def _unwrap(model: nn.Module) -> nn.Module:
    """The module whose named_modules the user means: inside DDP and torch.compile."""
    while True:
        if isinstance(model, nn.DataParallel):
            # Its replicas share the hooks and run in threads: each would overwrite the others' maps.
            raise TypeError("FeatureDistiller: nn.DataParallel is not supported; use DistributedDataParallel")
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def _select(model: nn.Module, layers: Selector, arg: str) -> List[Tuple[str, Optional[str]]]:
    """(module path, dict key or None) of each selected level, in order."""
    named = dict(model.named_modules())
    if callable(layers):
        specs = [(path, None) for path, module in named.items() if layers(path, module)]
        if not specs:
            raise ValueError(f"FeatureDistiller: {arg} selected no module of {type(model).__name__}")
        return specs
    names = [layers] if isinstance(layers, str) else list(layers) if isinstance(layers, (list, tuple)) else None
    if not names or not all(isinstance(n, str) for n in names):
        raise TypeError(f"FeatureDistiller: {arg} must be a module name, a list of them or a callable "
                        f"(path, module) -> bool, got {layers!r}")
    specs = []
    for name in names:
        path, _, key = name.partition(":")
        if path not in named:
            raise ValueError(f"FeatureDistiller: {arg} names {path!r}, which is no module of "
                             f"{type(model).__name__}; modules there include {_nearby(path, named)}")
        specs.append((path, key or None))
    return specs


def _remove_all(handles) -> None:
    for h in handles:
        h.remove()


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


def _needs_boxes(kind: str, options: dict) -> bool:
    return kind == "fgd" or options.get("mask", "none") == "boxes"


def _build(kind: str, options: dict, s_channels: int, t_channels: int, backend) -> Tuple[nn.Module, nn.Module]:
    """The pair's kdops.nn loss and the adaptation the loss does not do itself."""
    options = dict(options)
    if kind == "imitation":
        options.pop("mask", None)
        return HintLoss(s_channels, t_channels, backend=backend, **options), nn.Identity()
    if kind == "fgd":
        family = options.pop("family", None)
        if family is None:
            return FGDLoss(s_channels, t_channels, backend=backend, **options), nn.Identity()
        return FGDLoss.preset(family, s_channels, t_channels, backend=backend, **options), nn.Identity()
    adapt = nn.Conv2d(s_channels, t_channels, kernel_size=1) if s_channels != t_channels else nn.Identity()
    if kind == "cwd":
        return CWDLoss(backend=backend, **options), adapt
    return PKDLoss(backend=backend), adapt


def _stride_of(image_size, size) -> Optional[float]:
    """The stride of an (h, w) map of an (H, W) input, None when it has none."""
    (H, W), (h, w) = image_size, size
    if H % h == 0 and W % w == 0 and H // h == W // w:
        return float(H // h)
    # A ceil- (or floor-) rounded map of a power-of-two stride: 100 px at stride 8 -> 13 cells.
    s = 2.0 ** round(math.log2(H / h))
    if all(math.floor(n / s) <= m <= math.ceil(n / s) for n, m in ((H, h), (W, w))):
        return s
    return None


def match_size(student: Tensor, teacher: Tensor) -> Tensor:
    """The student's map resized bilinearly to the teacher's (H, W) when they differ (a low-resolution
    student, a ceil-rounded level). Resizing before a 1x1 adaptation conv equals resizing after it: the
    conv is affine per pixel and each bilinear output is a convex combination of input pixels."""
    if student.shape[-2:] != teacher.shape[-2:]:
        student = F.interpolate(student, size=teacher.shape[-2:], mode="bilinear", align_corners=False)
    return student


def pair_levels(student: Mapping[str, Hashable], teacher: Mapping[str, Hashable],
                tie: str = "in_order") -> List[Tuple[str, str]]:
    """(student level, teacher level) of equal keys (strides or sizes), in the student's order; student
    levels without a teacher level of their key are left out. On a tie, "in_order" pairs the k-th
    student level of a key with the k-th teacher level of it (or its last), "first" every student
    level of a key with the first teacher level of it."""
    groups: Dict[Hashable, List[str]] = {}
    for level, key in teacher.items():
        groups.setdefault(key, []).append(level)
    pairs, seen = [], {}
    for level, key in student.items():
        group = groups.get(key)
        if group:
            k = seen.get(key, 0) if tie == "in_order" else 0
            seen[key] = k + 1
            pairs.append((level, group[min(k, len(group) - 1)]))
    return pairs


def _pair(s_levels: Dict[str, Level], t_levels: Dict[str, Level], pair_by: str, tie: str) -> List[Tuple[str, str]]:
    if pair_by == "order":
        if len(s_levels) != len(t_levels):
            raise ValueError(f"FeatureDistiller: pair_by='order' needs as many student levels as teacher levels, "
                             f"got {list(s_levels)} and {list(t_levels)}")
        return list(zip(s_levels, t_levels))
    key = (lambda lv: lv.stride) if pair_by == "stride" else (lambda lv: tuple(lv.size))
    return pair_levels({n: key(lv) for n, lv in s_levels.items()}, {n: key(lv) for n, lv in t_levels.items()}, tie)


def _check_choices(pair_by: str, tie: str, reduction: str) -> None:
    for arg, value, choices in (("pair_by", pair_by, PAIR_BY), ("tie", tie, TIES),
                                ("reduction", reduction, REDUCTIONS)):
        if value not in choices:
            raise ValueError(f"FeatureDistiller: {arg} must be one of {choices}, got {value!r}")


def _level_items(levels, side: str):
    if not isinstance(levels, Mapping) or not levels:
        raise TypeError(f"FeatureDistiller.from_levels: the {side}'s levels must be a non-empty dict "
                        f"{{name: Level}}, got {levels!r}")
    return levels.items()


def _as_level(value, side: str, name: str) -> Level:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    if isinstance(value, tuple) and 1 <= len(value) <= 3:
        level = Level(*value)
        if isinstance(level.channels, int) and not isinstance(level.channels, bool) and level.channels >= 1 \
                and (level.stride is None or (isinstance(level.stride, (int, float)) and level.stride > 0)) \
                and (level.size is None or len(level.size) == 2):
            if name == "total":
                raise ValueError("FeatureDistiller: a level cannot be named 'total' (the key of the losses' sum)")
            return Level(level.channels, None if level.stride is None else float(level.stride),
                         None if level.size is None else tuple(int(n) for n in level.size))
    raise TypeError(f"FeatureDistiller.from_levels: the {side}'s level {name!r} must be a Level(channels, stride, "
                    f"size), a tuple of them or a channel count, got {value!r}")


def _image_size(example_inputs) -> Tuple[int, int]:
    stack = list(example_inputs)
    while stack:
        x = stack.pop(0)
        if isinstance(x, Tensor) and x.dim() >= 3:
            return int(x.shape[-2]), int(x.shape[-1])
        if isinstance(x, (list, tuple)):
            stack = list(x) + stack
    raise ValueError("FeatureDistiller: found no image (a tensor with >= 3 dims) in the teacher's example inputs; "
                     "pass image_size=")


def _recorded(maps: Dict[str, Tensor], level: str, side: str, hint: str) -> None:
    if level not in maps:
        raise RuntimeError(f"FeatureDistiller: no {side} map recorded for level {level!r}; {hint} before "
                           "computing the loss (the maps are dropped after each loss)")


def _level_map(maps: Mapping[str, Tensor], level: str, side: str) -> Tensor:
    if not isinstance(maps, Mapping) or level not in maps:
        keys = list(maps) if isinstance(maps, Mapping) else type(maps).__name__
        raise KeyError(f"FeatureDistiller.distil: no {side} map for level {level!r} (got {keys})")
    return maps[level]


def _no_key(side: str, path: str, output, key: str) -> str:
    return f"FeatureDistiller: the {side}'s module {path!r} returned {_describe(output)}, which has no key {key!r}"


def _describe(x) -> str:
    if isinstance(x, Tensor):
        return f"a tensor of shape {tuple(x.shape)}"
    if isinstance(x, Mapping):
        return f"a {type(x).__name__} with keys {list(x)}"
    return f"a {type(x).__name__}"


def _nearby(path: str, named: dict) -> List[str]:
    parent = path.rpartition(".")[0]
    children = [p for p in named if p and p.rpartition(".")[0] == parent]
    return children[:12] or [p for p in named if p][:12]


def _levels_info(levels: Dict[str, Level]) -> str:
    return ", ".join(name + (f" {lv.size[0]}x{lv.size[1]}" if lv.size is not None else "")
                     + (f" stride {lv.stride:g}" if lv.stride is not None else "") for name, lv in levels.items())
