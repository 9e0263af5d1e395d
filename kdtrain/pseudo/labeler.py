"""Teachers predict on an image folder; predictions merge affirmatively into one COCO json.

Under torchrun each rank labels a shard of the images and rank 0 merges and writes. An image that
cannot be read or labelled is left out, named with its reason in the log and in the json's ``info``
(``failed_images``), and the others are labelled.
"""

from __future__ import annotations

import json
import os
import time
from typing import Optional

import torch
from torchvision.models import detection
from torchvision.ops import batched_nms
from tqdm import tqdm

from kdtrain.config import PseudoLabelConfig
from kdtrain.data.coco import collate, load_coco_json
from kdtrain.data.image_check import check_images
from kdtrain.distributed import DistInfo, gather_to_main
from kdtrain.errors import UsageError, one_line
from kdtrain.models import load_detector
from kdtrain.data.images import read_image
from kdtrain.predict import list_images
from kdtrain.pseudo.class_map import (TeacherClasses, read_mapping_file, resolve_label_maps,
                                      student_categories)


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


class _Images(torch.utils.data.Dataset):
    def __init__(self, folder, names):
        self.folder, self.names = folder, names

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        """(name, image, None), or (name, None, why) for an image that cannot be read."""
        try:
            return self.names[i], read_image(os.path.join(self.folder, self.names[i])), None
        except Exception as e:  # this image is left out, not the whole folder
            return self.names[i], None, one_line(e)


def _mapping_per_teacher(cfg: PseudoLabelConfig) -> tuple[list, list]:
    n = len(cfg.teachers)
    if len(cfg.class_maps) not in (0, 1, n):
        raise UsageError(f"give no --class-map, one shared by all teachers, or one per teacher ({n}); "
                         f"got {len(cfg.class_maps)}")
    if not cfg.class_maps:
        return [None] * n, [None] * n
    if len(cfg.class_maps) == 1:
        shared = read_mapping_file(cfg.class_maps[0])
        return [shared] * n, cfg.class_maps * n
    return [read_mapping_file(p) for p in cfg.class_maps], list(cfg.class_maps)


def load_teachers(cfg: PseudoLabelConfig, device):
    """(models, per-teacher {label: student category id}, student categories)."""
    if not cfg.teachers:
        raise UsageError("pseudo-labelling needs at least one --teacher checkpoint")
    models, classes = [], []
    for path in cfg.teachers:
        model, spec, ckpt = load_detector(path)
        set_postprocess(model, cfg.score_threshold, cfg.nms_iou, cfg.max_detections)
        models.append(model.to(device).eval())
        classes.append(TeacherClasses.from_checkpoint(path, ckpt, spec.num_classes))
    mappings, mapping_paths = _mapping_per_teacher(cfg)
    given = load_coco_json(cfg.categories_from)["categories"] if cfg.categories_from else None
    categories = student_categories(classes, mappings, given)
    label_maps = resolve_label_maps(classes, mappings, categories, mapping_paths)
    if not any(label_maps):
        raise UsageError("no teacher class maps to a student class: check --class-map / --categories-from")
    return models, label_maps, categories


def _teacher_boxes(models, label_maps, images: list, cfg: PseudoLabelConfig) -> list:
    """Per image, every teacher's kept boxes as (x1, y1, x2, y2, score, student category id)."""
    merged = [[] for _ in images]
    for model, label_map in zip(models, label_maps):
        for i, det in enumerate(model(images)):
            boxes, scores, labels = filter_detections(det["boxes"], det["scores"], det["labels"],
                                                      cfg.score_threshold, cfg.nms_iou, cfg.max_detections)
            for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
                if label in label_map:  # classes the mapping drops are not the student's
                    merged[i].append((*box, score, label_map[label]))
    return merged


@torch.no_grad()
def label_images(models, label_maps, folder: str, names: list[str], cfg: PseudoLabelConfig, device,
                 show_progress: bool) -> tuple[dict, dict]:
    """({file name: (width, height, [(x1, y1, x2, y2, score, student category id), ...])},
    {file name: why it failed}) for ``names``. A batch that fails is labelled again image by image, so
    only the image at fault is left out."""
    loader = torch.utils.data.DataLoader(_Images(folder, names), batch_size=cfg.batch_size,
                                         num_workers=cfg.workers, collate_fn=collate)
    out, failed = {}, {}
    bar = tqdm(total=len(names), desc="pseudo-label", disable=not show_progress, dynamic_ncols=True)
    for batch in loader:
        bar.update(len(batch[0]))
        failed.update((name, why) for name, _, why in zip(*batch) if why is not None)
        readable = [(name, image) for name, image, why in zip(*batch) if why is None]
        if not readable:
            continue
        batch_names = [name for name, _ in readable]
        images = [image.to(device, non_blocking=True) for _, image in readable]
        try:
            merged = _teacher_boxes(models, label_maps, list(images), cfg)
        except Exception:  # find the image at fault
            merged = []
            for name, image in zip(batch_names, images):
                try:
                    merged += _teacher_boxes(models, label_maps, [image], cfg)
                except Exception as e:
                    failed[name] = one_line(e)
                    merged.append(None)
        for name, image, dets in zip(batch_names, images, merged):
            if dets is None:
                continue
            if cfg.merge_nms_iou is not None and dets:
                t = torch.tensor(dets, dtype=torch.float64)
                boxes, scores, cats = filter_detections(t[:, :4], t[:, 4], t[:, 5].long(), 0.0, cfg.merge_nms_iou, None)
                dets = [(*b, s, c) for b, s, c in zip(boxes.tolist(), scores.tolist(), cats.tolist())]
            out[name] = (int(image.shape[-1]), int(image.shape[-2]), dets)
    bar.close()
    return out, failed


def to_coco(labels_by_name: dict, categories: list[dict], keep_empty: bool, info: dict) -> dict:
    """COCO instances json; image ids 1..N in file-name order. Scores are kept on each annotation."""
    images, annotations = [], []
    for image_id, name in enumerate(sorted(labels_by_name), start=1):
        width, height, dets = labels_by_name[name]
        anns = []
        for x1, y1, x2, y2, score, cat in dets:
            w, h = round(x2 - x1, 2), round(y2 - y1, 2)
            if w <= 0 or h <= 0:
                continue  # a box rounded to nothing is not a training target
            anns.append({"id": len(annotations) + len(anns) + 1, "image_id": image_id, "category_id": int(cat),
                         "bbox": [round(x1, 2), round(y1, 2), w, h], "area": round(w * h, 2), "iscrowd": 0,
                         "score": round(float(score), 5)})
        if anns or keep_empty:
            images.append({"id": image_id, "file_name": name, "width": width, "height": height})
            annotations += anns
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


def write_json_atomic(data: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(data, f)
    os.replace(path + ".tmp", path)


def pseudo_label(cfg: PseudoLabelConfig, info: Optional[DistInfo] = None, log=print) -> Optional[dict]:
    """Label cfg.images with every teacher and write cfg.output (rank 0). Returns a summary on rank 0."""
    info = info or DistInfo()
    names = list_images(cfg.images)
    shard = names[info.rank::info.world_size]
    check_images([os.path.join(cfg.images, n) for n in shard], cfg.progress and info.is_main)
    models, label_maps, categories = load_teachers(cfg, info.device)
    start = time.perf_counter()
    mine = label_images(models, label_maps, cfg.images, shard, cfg, info.device, cfg.progress and info.is_main)
    seconds = time.perf_counter() - start
    shards = gather_to_main(mine, info)
    if not info.is_main:
        return None
    merged = {k: v for part, _ in shards for k, v in part.items()}
    failed = dict(sorted((k, v) for _, part in shards for k, v in part.items()))
    meta = {"description": "kdtrain pseudo-labels", "teachers": list(cfg.teachers),
            "score_threshold": cfg.score_threshold, "nms_iou": cfg.nms_iou, "max_detections": cfg.max_detections,
            "merge_nms_iou": cfg.merge_nms_iou, "failed_images": failed}
    coco = to_coco(merged, categories, cfg.keep_empty, meta)
    write_json_atomic(coco, cfg.output)
    for name, why in failed.items():
        log(f"[kdtrain] pseudo-labels: left out {name}: {why}")
    summary = {"images": len(names), "images_written": len(coco["images"]), "boxes": len(coco["annotations"]),
               "failed_images": len(failed), "output": cfg.output,
               "images_per_second": len(shard) / max(seconds, 1e-9) * info.world_size}
    log(f"[kdtrain] pseudo-labels: {summary['boxes']} boxes on {summary['images_written']}/{len(names)} images "
        f"-> {cfg.output} ({summary['images_per_second']:.2f} images/s)")
    return summary
