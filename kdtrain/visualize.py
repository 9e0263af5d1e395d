"""Pictures of what is distilled (as FGD's Fig. 5): ``python -m kdtrain visualize``.

For each image and each (student level, teacher level) pair of one stride, one PNG shows the image
with its boxes, the teacher's and the student's spatial attention, their channel attention, FGD's
foreground and background masks and the per-pixel imitation error. Attention and masks come from
kdops (attention_masks, box_masks; docs/math.md §1-2), on the grids the distillation losses use:
both networks see the student's transform of the image, and boxes go to a level as box / stride.

The imitation error compares the two maps after PKD's per-channel standardisation (docs/math.md §6):
error[h, w] = mean_c (S'[c, h, w] - T'[c, h, w])^2 / 2, whose mean over the map is kdops.pkd_loss(S, T)
(shown in the panel's title). Standardising removes each network's own activation scale, so the map
shows where the two disagree in pattern; it needs no adaptation layer, which model_final.pth does not
hold. It needs equal channel counts (every torchvision FPN has 256); otherwise the panel says so and
the channel-agnostic attention panels are still drawn.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from tqdm import tqdm

import kdops
from kdops.nn.maps_distiller import crop_to_common
from kdtrain.config import VisualizeConfig
from kdtrain.data.coco import CocoDetection
from kdtrain.distill.distiller import _as_dict, pair_alignment
from kdtrain.distill.levels import LevelPair, pair_levels, probe_levels
from kdtrain.distill.terms import fgd_preset, matched_student_feature
from kdtrain.errors import UsageError
from kdtrain.models import detector_family, load_detector

PKD_EPS = 1e-6  # kdops.pkd_loss's epsilon on the std, so the map's mean is its loss


def boxes_on_level(targets: list[dict], stride: int) -> list[torch.Tensor]:
    """Map boxes (in padded-batch pixels, as the shared transform returns them) to a level.

    Cell i of a stride-s level covers padded pixels [i*s, (i+1)*s), so the map is
    box / s, with s the level's stride on the padded batch (``level_strides``).
    FGD's official code scales by the unpadded image size instead, which shifts
    every box of an image smaller than its padded batch.
    """
    return [t["boxes"] / float(stride) for t in targets]


@dataclasses.dataclass
class LevelMaps:
    """Everything drawn for one image on one level pair (numpy, batch dimension dropped)."""
    pair: LevelPair
    teacher_spatial: np.ndarray   # (h_t, w_t), mean 1
    student_spatial: np.ndarray   # (h_s, w_s), mean 1
    teacher_channel: np.ndarray   # (C_t,), mean 1
    student_channel: np.ndarray   # (C_s,), mean 1
    fg: np.ndarray                # (h_t, w_t), FGD eq. 2
    bg: np.ndarray                # (h_t, w_t), FGD eq. 3
    error: Optional[np.ndarray]   # (h_t, w_t); None when it cannot be computed (error_note says why)
    error_mean: Optional[float]   # kdops.pkd_loss of the pair
    error_note: str = ""


def _standardise(x: torch.Tensor) -> torch.Tensor:
    """Each channel to zero mean and unit (unbiased) std over (N, H, W), as kdops.pkd_loss does."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.std(dim=(0, 2, 3), keepdim=True)
    return (x - mean) / (std + PKD_EPS)


def imitation_error(student: torch.Tensor, teacher: torch.Tensor, align: str = "crop"):
    """(per-pixel error (N, H_t, W_t) or None, kdops.pkd_loss or None, why it is missing) of (N, C, H, W) maps,
    aligned as training aligns them (Distiller.align): "crop" compares their common top-left cells (NaN in the
    teacher's cells past them), "resize" resizes the student onto the teacher (SSD's squashed input)."""
    if student.shape[1] != teacher.shape[1]:
        return None, None, (f"n/a: the student has {student.shape[1]} channels, the teacher {teacher.shape[1]}; "
                            "the imitation error compares channel by channel")
    full = teacher.shape[-2:]
    if align == "crop":
        student, teacher = crop_to_common(student, teacher)
    else:
        student = matched_student_feature(student, teacher)
    if teacher.shape[-2] * teacher.shape[-1] < 2:
        return None, None, "n/a: a 1-cell map has no spread to standardise"
    error = (_standardise(student) - _standardise(teacher)).square().mean(dim=1) / 2
    error = F.pad(error, (0, full[1] - error.shape[-1], 0, full[0] - error.shape[-2]), value=float("nan"))
    return error, float(kdops.pkd_loss(student, teacher)), ""


@torch.no_grad()
def level_maps(student: torch.Tensor, teacher: torch.Tensor, boxes: torch.Tensor, pair: LevelPair,
               temperature: float, align: str = "crop") -> LevelMaps:
    """The maps of one image: (1, C, H, W) features of a level pair and its (K, 4) boxes in padded pixels;
    ``align`` as imitation_error."""
    student, teacher = student.float(), teacher.float()
    t_spatial, t_channel = kdops.attention_masks(teacher, temperature=temperature)
    s_spatial, s_channel = kdops.attention_masks(student, temperature=temperature)
    fg, bg = kdops.box_masks(boxes_on_level([{"boxes": boxes}], pair.stride), tuple(teacher.shape[-2:]))
    error, error_mean, note = imitation_error(student, teacher, align)
    as_np = lambda x: x[0].cpu().numpy()  # noqa: E731
    return LevelMaps(pair, as_np(t_spatial), as_np(s_spatial), as_np(t_channel), as_np(s_channel), as_np(fg),
                     as_np(bg), None if error is None else as_np(error), error_mean, note)


def _display_image(transform, batch: torch.Tensor) -> np.ndarray:
    """The normalised network input back in [0, 1], (H, W, 3)."""
    mean = torch.tensor(transform.image_mean, device=batch.device).view(3, 1, 1)
    std = torch.tensor(transform.image_std, device=batch.device).view(3, 1, 1)
    return (batch * std + mean).clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def _draw_boxes(ax, boxes: np.ndarray, color: str, names: Optional[list] = None) -> None:
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=1.2))
        if names:
            ax.text(x1, y1, names[i], color="black", fontsize=7, va="bottom",
                    bbox=dict(facecolor=color, edgecolor="none", pad=1, alpha=0.8))


def _heatmap(fig, ax, values: np.ndarray, stride: int, image_hw: tuple, boxes: np.ndarray, title: str,
             vmin=None, vmax=None) -> None:
    """``values`` on a stride grid laid over image pixels (cell i covers [i*s, (i+1)*s)), boxes outlined."""
    h, w = values.shape
    if vmin is not None and vmax is None and values.max() <= vmin:
        vmax = vmin + 1  # an all-zero mask (all foreground, or no box): matplotlib would centre it on 0
    im = ax.imshow(values, cmap="viridis", extent=(0, w * stride, h * stride, 0), interpolation="nearest",
                   vmin=vmin, vmax=vmax)
    _draw_boxes(ax, boxes, "white")
    ax.set_xlim(0, image_hw[1])
    ax.set_ylim(image_hw[0], 0)  # the padding beyond the resized image is left out
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)


def render_level(maps: LevelMaps, image: np.ndarray, boxes: np.ndarray, names: list, title: str,
                 path: str, temperature: float) -> str:
    """One PNG: image, attention (teacher, student), error / fg, bg, channel attention."""
    fig = Figure(figsize=(17, 8), dpi=90, layout="constrained")
    grid = fig.add_gridspec(2, 4)
    stride, hw = maps.pair.stride, image.shape[:2]
    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(image)
    _draw_boxes(ax, boxes, "yellow", names)
    ax.set_title(f"input ({hw[1]}x{hw[0]} after the student's transform)", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    # One colour scale for both attentions, so they compare by eye.
    vmax = float(max(maps.teacher_spatial.max(), maps.student_spatial.max()))
    _heatmap(fig, fig.add_subplot(grid[0, 1]), maps.teacher_spatial, stride, hw, boxes,
             f"teacher spatial attention (level {maps.pair.teacher})", 0.0, vmax)
    _heatmap(fig, fig.add_subplot(grid[0, 2]), maps.student_spatial, stride, hw, boxes,
             f"student spatial attention (level {maps.pair.student})", 0.0, vmax)
    ax = fig.add_subplot(grid[0, 3])
    if maps.error is None:
        ax.text(0.5, 0.5, maps.error_note, ha="center", va="center", wrap=True, fontsize=9)
        ax.set_axis_off()
        ax.set_title("imitation error", fontsize=9)
    else:
        _heatmap(fig, ax, maps.error, stride, hw, boxes,
                 f"imitation error, standardised maps\n(mean = kdops.pkd_loss = {maps.error_mean:.4g})", 0.0)
    _heatmap(fig, fig.add_subplot(grid[1, 0]), maps.fg, stride, hw, boxes, "FGD foreground mask (1 / box area)", 0.0)
    _heatmap(fig, fig.add_subplot(grid[1, 1]), maps.bg, stride, hw, boxes, "FGD background mask (1 / bg cells)", 0.0)
    ax = fig.add_subplot(grid[1, 2:])
    ax.plot(maps.teacher_channel, label=f"teacher ({len(maps.teacher_channel)} channels)", linewidth=0.9)
    ax.plot(maps.student_channel, label=f"student ({len(maps.student_channel)} channels)", linewidth=0.9)
    ax.axhline(1.0, color="grey", linewidth=0.6, linestyle="--")
    ax.set_xlabel("channel")
    ax.set_yscale("log")  # a few channels take most of the softmax; log keeps the rest readable
    ax.set_ylabel("attention (mean 1, log scale)")
    ax.set_title("channel attention", fontsize=9)
    ax.legend(fontsize=8)
    fig.suptitle(f"{title}\nstride {stride}: student level {maps.pair.student} / teacher level "
                 f"{maps.pair.teacher}, {maps.fg.shape[1]}x{maps.fg.shape[0]} cells; attention temperature "
                 f"{temperature:g}", fontsize=11)
    fig.savefig(path)
    return path


def _output_name(file_name: str, pair: LevelPair) -> str:
    stem = os.path.splitext(file_name)[0].replace("/", "_").replace(os.sep, "_")
    return f"{stem}_s{pair.student}_t{pair.teacher}.png"


@torch.no_grad()
def visualize(cfg: VisualizeConfig, device: torch.device = torch.device("cpu"), log=print) -> list[str]:
    """Write the PNGs of the first ``cfg.num_images`` images of ``cfg.ann``; returns their paths."""
    student, _, _ = load_detector(cfg.student)
    teacher, _, _ = load_detector(cfg.teacher)
    student.eval().to(device)
    teacher.eval().to(device)
    _, s_strides = probe_levels(student.backbone)
    _, t_strides = probe_levels(teacher.backbone)
    pairs = pair_levels(s_strides, t_strides)
    if not pairs:
        raise UsageError(f"--student/--teacher: no student level (strides {dict(s_strides)}) shares a stride "
                         f"with a teacher level (strides {dict(t_strides)})")
    family = detector_family(student)
    temperature = cfg.temperature or kdops.nn.FGDLoss.preset(fgd_preset(family), 1, 1).temperature
    align = pair_alignment(family)  # as training aligns the pairs
    log("[kdtrain] level pairs (student->teacher @stride): "
        + ", ".join(f"{p.student}->{p.teacher}@{p.stride}" for p in pairs))
    dataset = CocoDetection(cfg.images, cfg.ann)
    names = {c["id"]: c["name"] for c in dataset.categories}
    os.makedirs(cfg.output_dir, exist_ok=True)
    paths = []
    for index in tqdm(range(min(cfg.num_images, len(dataset))), desc="visualize", disable=not cfg.progress):
        image, target = dataset[index]
        image_list, targets = student.transform([image.to(device)], [{"boxes": target["boxes"].to(device)}])
        s_feats = _as_dict(student.backbone(image_list.tensors))
        t_feats = _as_dict(teacher.backbone(image_list.tensors))
        boxes = targets[0]["boxes"]
        h, w = image_list.image_sizes[0]
        picture = _display_image(student.transform, image_list.tensors[0])[:h, :w]
        box_names = [names[dataset.label_to_cat_id[int(label)]] for label in target["labels"]]
        file_name = dataset.images[index]["file_name"]
        for pair in pairs:
            maps = level_maps(s_feats[pair.student], t_feats[pair.teacher], boxes, pair, temperature, align)
            path = os.path.join(cfg.output_dir, _output_name(file_name, pair))
            paths.append(render_level(maps, picture, boxes.cpu().numpy(), box_names, file_name, path, temperature))
    log(f"[kdtrain] {len(paths)} pictures written to {cfg.output_dir}")
    return paths
