"""COCO evaluation (pycocotools) of a detector, sharded over ranks, merged on rank 0."""

from __future__ import annotations

import contextlib
import io
import time

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from kdtrain.data.coco import collate
from kdtrain.distributed import DistInfo, gather_to_main

METRIC_NAMES = ("mAP", "AP50", "AP75", "APs", "APm", "APl")


def detections_to_coco(outputs, image_ids, label_to_cat_id) -> list[dict]:
    results = []
    for out, image_id in zip(outputs, image_ids):
        boxes = out["boxes"].float().cpu()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        for box, score, label in zip(xywh, out["scores"].tolist(), out["labels"].tolist()):
            if label not in label_to_cat_id:
                continue  # a label the dataset does not have (e.g. a 91-class model)
            results.append({"image_id": int(image_id), "category_id": int(label_to_cat_id[label]),
                            "bbox": [round(v, 2) for v in box], "score": round(float(score), 5)})
    return results


@torch.no_grad()
def run_inference(model, dataset, info: DistInfo, batch_size: int = 4, workers: int = 0,
                  progress: bool = True, desc: str = "eval", label_to_cat_id: dict | None = None):
    """This rank's COCO results and (images, seconds) it processed.

    ``label_to_cat_id``: the model's label map (a checkpoint's); None: the dataset's, for a model trained on it.
    """
    label_to_cat_id = dataset.label_to_cat_id if label_to_cat_id is None else label_to_cat_id
    model.eval()
    indices = list(range(info.rank, len(dataset), info.world_size))  # disjoint shards, no padding
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size,
                                         num_workers=workers, collate_fn=collate)
    results, seconds = [], 0.0
    device = next(model.parameters()).device
    for images, targets in tqdm(loader, desc=desc, disable=not (progress and info.is_main), leave=False):
        images = [im.to(device, non_blocking=True) for im in images]
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        outputs = model(images)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
        results.extend(detections_to_coco(outputs, [t["image_id"] for t in targets], label_to_cat_id))
    return results, (len(indices), seconds)


def _no_detections(gt: COCO) -> COCO:
    """An empty result set (loadRes rejects an empty list), so groups with ground truth score 0."""
    dt = COCO()
    dt.dataset = {"images": list(gt.dataset["images"]), "categories": list(gt.dataset["categories"]),
                  "annotations": []}
    dt.createIndex()
    return dt


def coco_metrics(ann_file: str, results: list[dict]) -> dict:
    """The six standard box metrics; None for an area group without ground truth objects."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(ann_file)
        dt = gt.loadRes(results) if results else _no_detections(gt)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # stats 0..5: AP@[.5:.95], AP50, AP75, AP small, medium, large; -1 means "no such objects", not zero.
    return {k: float(v) if v >= 0 else None for k, v in zip(METRIC_NAMES, ev.stats[:6])}


def evaluate(model, dataset, info: DistInfo, batch_size: int = 4, workers: int = 0, progress: bool = True,
             desc: str = "eval", label_to_cat_id: dict | None = None):
    """Metrics dict on rank 0 (None on other ranks), including images/s of inference."""
    results, (count, seconds) = run_inference(model, dataset, info, batch_size, workers, progress, desc,
                                              label_to_cat_id)
    gathered = gather_to_main((results, count, seconds), info)
    if not info.is_main:
        return None
    all_results = [r for part in gathered for r in part[0]]
    metrics = coco_metrics(dataset.ann_file, all_results)
    total_images = sum(p[1] for p in gathered)
    # Ranks run concurrently: throughput is images over the slowest rank's time.
    slowest = max(p[2] for p in gathered) or 1e-9
    metrics["images_per_s"] = total_images / slowest
    metrics["num_detections"] = len(all_results)
    return metrics
