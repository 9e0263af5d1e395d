"""kdops feature distillation inside ultralytics' own training loop (YOLO detect students).

DistillationTrainer is ultralytics' DetectionTrainer plus, once its own setup is done (the
on_pretrain_routine_end callback, after the optimizer and the EMA copy exist):
  - a kdops.nn.FeatureDistiller on the student's and the teacher's Detect-head inputs (the neck's
    P3/P4/P5 maps), paired by stride; the teacher frozen, in eval mode, run under no_grad;
  - the student's criterion wrapped: after ultralytics' detection loss of a training batch it runs the
    teacher on the same images and adds the distillation loss as one more loss item, "kd_loss"
    (batch["bboxes"], normalised xywh, become FGD's boxes in image pixels);
  - the distiller's parameters (adaptation convs, FGD's GcBlocks) as one more optimizer group.
Hooks are removed when train() ends, also on an error. The EMA copy, the validation and the
checkpoints (best.pt, last.pt) are the student's alone: a plain YOLO model.

Built after the EMA on purpose: a deep copy of a hooked student would carry the hooks into the
EMA model, whose checkpoints could then not be pickled.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import nn

from kdtrain.yolo.offline import import_ultralytics

import_ultralytics()  # before any ultralytics module: offline settings are read at import

from ultralytics.cfg import DEFAULT_CFG  # noqa: E402
from ultralytics.models.yolo.detect import DetectionTrainer  # noqa: E402
from ultralytics.nn.modules.head import Detect  # noqa: E402
from ultralytics.nn.tasks import DetectionModel, load_checkpoint  # noqa: E402
from ultralytics.utils import LOGGER  # noqa: E402
from ultralytics.utils.torch_utils import unwrap_model  # noqa: E402

from kdops.nn import FeatureDistiller  # noqa: E402
from kdtrain.distill.recipes import DEFAULT_WEIGHTS  # noqa: E402
from kdtrain.errors import UsageError  # noqa: E402
from kdtrain.yolo.safe_files import check_files  # noqa: E402

# recipe -> FeatureDistiller loss spec. FGD and MGD: their one-stage presets (FGD's RetinaNet one; YOLO's
# dense head is one-stage); imitation: kdops.nn.HintLoss' mean-normalised MSE, kdtrain's choice.
RECIPES = {
    "imitation": "imitation",
    "fgd": ("fgd", {"family": "retinanet"}),
    "cwd": "cwd",
    "pkd": "pkd",
    "mgd": ("mgd", {"family": "one_stage"}),
}
# Ultralytics' arguments kdtrain changes: nothing fetched (plots need Arial.ttf, the AMP check loads
# yolo11n.pt), no compile (the hooks are added after the model is set up).
OFFLINE_OVERRIDES = {"plots": False, "amp": False, "compile": False}


def detect_inputs(model: nn.Module) -> list[str]:
    """Module names of the maps a YOLO model's Detect head reads (e.g. model.15, model.18, model.21)."""
    for m in getattr(model, "model", []):
        if isinstance(m, Detect):
            return [f"model.{i}" for i in m.f]
    raise UsageError(f"{type(model).__name__} has no ultralytics Detect head; name its layers (teacher_layers=)")


class TorchvisionBackbone(nn.Module):
    """A torchvision detector's backbone (+FPN) seeing YOLO's [0, 1] images: normalised with the
    detector's own mean and std, at the YOLO image size (no resize)."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.backbone = detector.backbone
        self.register_buffer("mean", torch.tensor(detector.transform.image_mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(detector.transform.image_std).view(1, -1, 1, 1))

    def forward(self, images):
        return self.backbone((images - self.mean) / self.std)


def load_teacher(spec, nc: int, channels: int = 3) -> tuple[nn.Module, object]:
    """(teacher module, its layers or None for the Detect head's inputs) from a YOLO yaml (random weights:
    a smoke test), an ultralytics checkpoint (.pt), a kdtrain torchvision checkpoint (.pth) or a
    module; a torchvision detector (file or module) gives its backbone (+FPN) levels."""
    if isinstance(spec, nn.Module):
        if hasattr(spec, "backbone") and hasattr(spec, "transform"):  # a torchvision detector
            spec = TorchvisionBackbone(spec)
        return spec, "backbone" if isinstance(spec, TorchvisionBackbone) else None
    spec = str(spec)
    check_files({"teacher": spec})  # before ultralytics unpickles or parses it
    if spec.endswith((".yaml", ".yml")):
        return DetectionModel(spec, nc=nc, ch=channels, verbose=False), None
    if not os.path.isfile(spec):
        raise UsageError(f"teacher: no such file: {spec} (give a YOLO .yaml, an ultralytics .pt or a kdtrain .pth)")
    if spec.endswith(".pt"):
        model, _ = load_checkpoint(spec)
        return model.float(), None
    from kdtrain.models import load_detector

    detector, _, _ = load_detector(spec)
    return TorchvisionBackbone(detector), "backbone"


def yolo_boxes(batch: dict, image_shape) -> list:
    """One (K_i, 4) x1y1x2y2 tensor per image, in the pixels of batch["img"], from ultralytics'
    normalised xywh batch["bboxes"] and their image index batch["batch_idx"]."""
    n, (H, W) = image_shape[0], image_shape[-2:]
    xywh = batch["bboxes"].float()
    scale = xywh.new_tensor([W, H, W, H])
    xyxy = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1) * scale
    index = batch["batch_idx"].view(-1).long()
    return [xyxy[index == i] for i in range(n)]


class DistillationCriterion:
    """Ultralytics' detection criterion plus the distillation loss: (loss, items) as the trainer
    expects them, the distillation loss appended to the loss vector times the batch size (as
    ultralytics scales its own terms) and to the items as "kd_loss"."""

    def __init__(self, criterion, distiller: FeatureDistiller, student: nn.Module):
        self.criterion, self.distiller, self.student = criterion, distiller, student
        self.last_terms: dict = {}  # the last batch's weighted loss per level, detached

    def __call__(self, preds, batch):
        loss, items = self.criterion(preds, batch)
        if not isinstance(items, dict):  # older ultralytics: a tensor of fixed loss names
            raise RuntimeError(f"kdtrain yolo needs an ultralytics whose criteria return a dict of loss items "
                               f"(8.4.190 does); this one returned {type(items).__name__}")
        if not self.student.training:  # a loss outside training: no teacher, and no maps kept
            self.distiller.clear()
            return loss, items
        images = batch["img"]
        self.distiller.teacher_forward(images)
        terms = self.distiller(boxes=yolo_boxes(batch, images.shape))
        kd = terms["total"]
        self.last_terms = {k: v.detach() for k, v in terms.items()}
        loss = torch.cat([loss, (kd * images.shape[0]).reshape(1).to(loss.dtype)])
        return loss, {**items, "kd_loss": kd.detach()}

    def __getattr__(self, name):  # e.g. update() of YOLO26's end-to-end loss, called each epoch
        if name in ("criterion", "__setstate__"):
            raise AttributeError(name)
        return getattr(self.criterion, name)


class DistillationTrainer(DetectionTrainer):
    """DetectionTrainer whose student learns from `teacher` through kdops' feature losses.

        trainer = DistillationTrainer(overrides=dict(model="yolov8n.yaml", data="data.yaml", epochs=3,
                                                     imgsz=160), teacher="teacher/best.pt", recipe="fgd")
        trainer.train()

    teacher: see load_teacher. recipe: imitation, fgd, cwd, pkd or mgd. weight: the distillation loss's
    weight (default: kdtrain's for the recipe). loss_options: the recipe's kdops options (e.g.
    {"tau": 4.0} for cwd). student_layers/teacher_layers: FeatureDistiller selectors; default: the
    Detect head's inputs (a torchvision teacher: its backbone's levels). Single device only.
    """

    def __init__(self, cfg=DEFAULT_CFG, overrides: Optional[dict] = None, _callbacks=None, *, teacher,
                 recipe: str = "fgd", weight: Optional[float] = None, loss_options: Optional[dict] = None,
                 student_layers=None, teacher_layers=None):
        if recipe not in RECIPES:
            raise UsageError(f"unknown recipe {recipe!r} for YOLO students; choose from {', '.join(RECIPES)}")
        overrides = {**OFFLINE_OVERRIDES, **(overrides or {})}
        if overrides.get("compile"):
            raise UsageError("compile is not supported with kdtrain's YOLO distillation (hooks are added after "
                             "ultralytics sets the model up)")
        super().__init__(cfg, overrides, _callbacks)
        if self.world_size > 1:
            raise UsageError("kdtrain's YOLO distillation runs on one device (the distiller's parameters have no "
                             "gradient all-reduce here); give one device")
        kind = RECIPES[recipe]
        if loss_options:
            kind = (kind if isinstance(kind, str) else kind[0],
                    {**({} if isinstance(kind, str) else kind[1]), **loss_options})
        self.kd_recipe, self.kd_loss = recipe, kind
        self.kd_weight = DEFAULT_WEIGHTS[recipe] if weight is None else float(weight)
        self.kd_teacher_spec, self.kd_layers = teacher, (student_layers, teacher_layers)
        self.distiller: Optional[FeatureDistiller] = None
        self.teacher: Optional[nn.Module] = None
        self.add_callback("on_pretrain_routine_end", lambda trainer: trainer.attach_distiller())

    def attach_distiller(self) -> None:
        """Build the distiller on the set-up student and wrap its criterion (after the optimizer and EMA exist)."""
        student = unwrap_model(self.model)
        teacher, teacher_default = load_teacher(self.kd_teacher_spec, self.data["nc"], self.data.get("channels", 3))
        self.teacher = teacher.to(self.device)
        s_layers, t_layers = self.kd_layers
        s_layers = s_layers or detect_inputs(student)
        t_layers = t_layers or teacher_default or detect_inputs(teacher)
        probe = torch.zeros(2, self.data.get("channels", 3), self.args.imgsz, self.args.imgsz, device=self.device)
        self.distiller = FeatureDistiller(student, self.teacher, s_layers, t_layers, example_inputs=(probe,),
                                          loss=self.kd_loss, weights=self.kd_weight, pair_by="stride").to(self.device)
        LOGGER.info(f"kdtrain: {self.kd_recipe} distillation (weight {self.kd_weight:g}) {self.distiller.extra_repr()}")
        self._add_param_group([p for p in self.distiller.parameters() if p.requires_grad])
        if getattr(student, "criterion", None) is None:
            student.criterion = student.init_criterion()
        student.criterion = DistillationCriterion(student.criterion, self.distiller, student)

    def _add_param_group(self, params: list) -> None:
        """The distiller's parameters as one more group, trained like the student's norm weights (no weight
        decay, plain SGD/Adam), warmed up and scheduled with the others."""
        if not params:
            return
        template = next((g for g in self.optimizer.param_groups if g.get("param_group") == "bn"),
                        self.optimizer.param_groups[0])
        group = {k: v for k, v in template.items() if k not in ("params", "use_muon")}
        group.update(params=params, weight_decay=0.0, param_group="kd")
        if "use_muon" in template:
            group["use_muon"] = False
        self.optimizer.add_param_group(group)
        # LambdaLR keeps one base lr and one lambda per group, zipped strictly with the groups.
        self.scheduler.base_lrs.append(group["initial_lr"])
        self.scheduler.lr_lambdas.append(self.scheduler.lr_lambdas[0])

    def remove_distiller(self) -> None:
        """Remove the hooks and restore the student's own criterion."""
        if self.distiller is None:
            return
        self.distiller.remove()
        student = self.distiller.student
        if isinstance(getattr(student, "criterion", None), DistillationCriterion):
            student.criterion = student.criterion.criterion

    def train(self):
        try:
            return super().train()
        finally:
            self.remove_distiller()


def train_yolo(student: str, data: str, teacher=None, recipe: str = "fgd", weight: Optional[float] = None,
               loss_options: Optional[dict] = None, **overrides) -> dict:
    """Train `student` (a YOLO yaml or .pt) on `data` (a data.yaml), distilled from `teacher` unless
    recipe is "none" (then ultralytics' DetectionTrainer alone, with the same offline settings).
    `overrides`: ultralytics' training arguments (epochs, imgsz, batch, seed, project, name, ...).
    Returns the final validation's box mAP50-95 and mAP50, the wall time and where the weights are."""
    import time

    from ultralytics.data.utils import check_det_dataset

    check_files({"--student": student, "--teacher": teacher, "--data": data})  # before ultralytics reads any
    try:  # missing images are an error here, never a download (the trainer's own check would fetch a download: URL)
        check_det_dataset(data, autodownload=False)
    except (FileNotFoundError, KeyError, SyntaxError) as e:
        raise UsageError(f"data {data}: {e}") from None
    args = {**OFFLINE_OVERRIDES, **overrides, "model": student, "data": data}
    if recipe == "none":
        trainer = DetectionTrainer(overrides=args)
    else:
        if teacher is None:
            raise UsageError(f"recipe {recipe} needs a teacher")
        trainer = DistillationTrainer(overrides=args, teacher=teacher, recipe=recipe, weight=weight,
                                      loss_options=loss_options)
    start = time.perf_counter()
    trainer.train()
    metrics = trainer.metrics or {}
    return {"recipe": recipe, "mAP50-95": metrics.get("metrics/mAP50-95(B)"), "mAP50": metrics.get("metrics/mAP50(B)"),
            "wall_s": round(time.perf_counter() - start, 1), "best": str(trainer.best), "save_dir": str(trainer.save_dir)}
