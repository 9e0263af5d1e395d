"""FeatureDistiller: feature distillation for any two nn.Modules (docs/math.md §10). Forward hooks record
their maps (kdops/nn/hooks.py); a MapsDistiller (kdops/nn/maps_distiller.py) computes the losses of the
pairs kdops/nn/pairing.py makes."""

import weakref
from collections.abc import Mapping
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from kdops.nn import hooks, pairing
from kdops.nn.maps_distiller import (LossSpec, MapsDistiller, check_choices, loss_specs, match_size,  # noqa: F401
                                     needs_boxes)
from kdops.nn.pairing import Level, Pair  # noqa: F401  (Level: kdops.nn.distiller.Level, as before)


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

    Only the adaptation layers and the losses' own layers (FGD's GcBlocks, MGD's generation block) are
    parameters of the distiller: add them to the optimizer. Student and teacher are not submodules (not
    in its state_dict nor moved by its .to()).

    Levels: a module path of `model.named_modules()` ("layer3") whose output is an (N, C, H, W)
    tensor, or a module returning a dict of maps: "backbone" takes every entry (levels
    "backbone:0", "backbone:1", ... for torchvision's FPN), "backbone:0" one; "" is the model itself
    (a backbone returning a dict gives the levels "0", "1", ...). A callable
    `select(path, module) -> bool` picks modules instead of naming them. A module that runs k > 1 times
    per forward (a detector head shared by the FPN levels) gives k levels "<level>#0" ... "<level>#k-1",
    in call order; every forward must run it as often as the probe did (more often raises, naming it).

    Pairing (`pair_by`): "stride" pairs each student level with the teacher level of the same stride;
    student levels without one are left out (see `pairs`). When several levels share a stride, `tie`
    "in_order" pairs the k-th student level of it with the k-th teacher level of it (or its last),
    "first" every student level of it with the first teacher level of it. "size" does the same by
    (H, W). "order" pairs the two lists in order. One probe forward of each model on `example_inputs`
    (eval mode, no_grad, to its end) finds the channels, sizes, strides and calls: stride = image size / map size, to the
    nearest power of two when the map was ceil-rounded (a 100 px side at stride 8 has 13 cells).
    Strides are in the teacher's input pixels: a student on half-size inputs (`teacher_example_inputs`
    at full size, Chen 2017's low-resolution student) pairs its stride-s levels with the teacher's
    stride-2s levels.

    Adaptation: a student map of another size than its teacher's is resized bilinearly to it (PKDLoss
    resizes its input itself, after the adaptation, as mmrazor's does); a 1x1 conv maps the student's
    channels to the teacher's (HintLoss' own `adapt`, FGDLoss' and MGDLoss' own `align`, `adapt[i]` for CWD
    and PKD, which only have one when the channel counts differ).

    Loss per pair (`loss`): a kind, or (kind, options), for every pair, or a dict level -> either, by
    student level name:
        "imitation": kdops.nn.HintLoss; options loss, normalize, adapt, and mask="boxes" to imitate
            only inside the boxes (0/1 mask of kdops.box_masks' foreground), default "none".
        "fgd": kdops.nn.FGDLoss; options family ("two_stage", "retinanet", "fcos": FGDLoss.preset)
            and the hyper-parameters temperature, alpha, beta, gamma, lambda_.
        "cwd": kdops.nn.CWDLoss; option tau.        "pkd": kdops.nn.PKDLoss.
        "mgd": kdops.nn.MGDLoss; options family ("two_stage", "one_stage": MGDLoss.preset), alpha and
            lambda_. Its random masks come from each MGDLoss' own generator, seeded from torch's global
            one when the distiller is built; their state is in the distiller's state_dict.
    `weights`: one float for every pair, or a dict student level -> float (default 1.0). `reduction`:
    "total" is the "sum" of the weighted pair losses or their "mean".

    Maps the training loop already has (a trainer that runs the backbones itself):
    `FeatureDistiller.from_levels(student_levels, teacher_levels, ...)` builds the same pairs,
    adaptation layers and losses from each side's {level: Level(channels, stride, size)}, without
    models or hooks: a MapsDistiller, whose `distil(student_maps, teacher_maps, boxes)` returns the
    losses of two {level: map} dicts. A FeatureDistiller is its hooks around such a MapsDistiller:
    the same pairs, modules and state_dict, and `distil` computes the losses of the recorded maps.

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


    def __init__(self, student: nn.Module, teacher: nn.Module, student_layers: hooks.Selector,
                 teacher_layers: Optional[hooks.Selector] = None, *, example_inputs, teacher_example_inputs=None,
                 loss: Union[LossSpec, Dict[str, LossSpec]] = "imitation",
                 weights: Union[float, Dict[str, float]] = 1.0, pair_by: str = "stride", tie: str = "in_order",
                 reduction: str = "sum", image_size: Optional[Sequence[int]] = None, backend: Optional[str] = None):
        super().__init__()
        check_choices(pair_by=pair_by, tie=tie, reduction=reduction)
        student, teacher = hooks.unwrap(student), hooks.unwrap(teacher)
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
        self._student = hooks.Recorder("student", student)
        self._teacher = hooks.Recorder("teacher", teacher)
        s_shapes = self._student.probe(hooks.select(student, student_layers, "student_layers"), example_inputs)
        t_shapes = self._teacher.probe(hooks.select(
            teacher, student_layers if teacher_layers is None else teacher_layers, "teacher_layers"),
            teacher_example_inputs)
        teacher.eval()
        teacher.requires_grad_(False)
        if image_size is None:
            image_size = hooks.image_size(teacher_example_inputs)
        specs = loss_specs(loss, list(s_shapes))
        strides_for_boxes = any(needs_boxes(kind, options) for kind, options in specs.values())
        s_levels = {level: Level(shape[0], self._stride(image_size, shape, "student", level, pair_by == "stride"),
                                 shape[1:]) for level, shape in s_shapes.items()}
        t_levels = {level: Level(shape[0], self._stride(image_size, shape, "teacher", level,
                                                        pair_by == "stride" or strides_for_boxes), shape[1:])
                    for level, shape in t_shapes.items()}
        distiller = MapsDistiller(s_levels, t_levels, pairing.pair(s_levels, t_levels, pair_by, tie), loss=loss,
                                  weights=weights, reduction=reduction, backend=backend)
        # The maps distiller's modules are this one's: the same parameters and state_dict layout as a
        # from_levels distiller's. It is not a submodule itself (that would register them twice).
        self.losses, self.adapt = distiller.losses, distiller.adapt
        self._distiller = [distiller]
        # Hook only the modules of paired levels.
        handles = (self._student.hook({p.student for p in self.pairs})
                   + self._teacher.hook({p.teacher for p in self.pairs}))
        self._finalizer = weakref.finalize(self, _remove_all, handles)

    # A distiller of maps the caller computes, without models or hooks.
    from_levels = staticmethod(MapsDistiller.from_levels)

    @staticmethod
    def _stride(image_size, shape, side: str, level: str, needed: bool) -> Optional[float]:
        stride = pairing.stride_of(image_size, shape[1:])
        if stride is None and needed:
            raise ValueError(f"FeatureDistiller: the {side}'s level {level!r} is {shape[1]}x{shape[2]} on a "
                             f"{image_size[0]}x{image_size[1]} input: no whole stride. Pass image_size= (the size "
                             "the layers see, e.g. after the model resizes its input), or pair_by='size'/'order' "
                             "with a loss that needs no boxes")
        return stride

    # ---- what the maps distiller holds --------------------------------------------------------------
    @property
    def pairs(self) -> List[Pair]:
        return self._distiller[0].pairs

    @property
    def weights(self) -> List[float]:
        return self._distiller[0].weights

    @property
    def reduction(self) -> str:
        return self._distiller[0].reduction

    @property
    def backend(self) -> Optional[str]:
        return self._distiller[0].backend

    def distil(self, student_maps: Mapping[str, Tensor], teacher_maps: Mapping[str, Tensor],
               boxes: Optional[Sequence[Tensor]] = None) -> Dict[str, Tensor]:
        """MapsDistiller.distil: the losses of maps the caller passes."""
        return self._distiller[0].distil(student_maps, teacher_maps, boxes)

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
                self._student.recorded(pair.student, "run the student forward")
                self._teacher.recorded(pair.teacher, "call teacher_forward")
            return self.distil(self._student.maps, self._teacher.maps, boxes)
        finally:
            self.clear()

    def clear(self) -> None:
        """Drop the recorded maps (and the student's graph they hold) and start the modules' call counts afresh."""
        for recorder in (self._student, self._teacher):
            recorder.maps.clear()
            recorder.counts.clear()

    def remove(self) -> None:
        """Remove every hook and drop the recorded maps."""
        self._finalizer()
        self.clear()

    def __enter__(self) -> "FeatureDistiller":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def extra_repr(self) -> str:
        return self._distiller[0].extra_repr()

    def _check_hooked(self, what: str) -> None:
        if not self._finalizer.alive:
            raise RuntimeError(f"FeatureDistiller.{what}: the hooks were removed (remove() or the end of a with block)")


def _remove_all(handles) -> None:
    for h in handles:
        h.remove()
