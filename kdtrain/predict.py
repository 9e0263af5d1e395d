"""Detections for a folder of images, written as a COCO results json."""

from __future__ import annotations

import json
import os

import torch
from tqdm import tqdm

from kdtrain.data.coco import DatasetError
from kdtrain.data.images import read_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def list_images(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise DatasetError(f"image folder not found: {folder}")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise DatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    return names


@torch.no_grad()
def predict_folder(model, folder: str, label_to_cat_id: dict, image_ids: dict | None = None,
                   batch_size: int = 4, score_threshold: float = 0.05, progress: bool = True) -> list[dict]:
    """COCO results; image ids from ``image_ids`` (file name -> id) or 1..N in sorted name order.

    Each result also carries ``file_name`` so it can be read without a matching json.
    """
    model.eval()
    device = next(model.parameters()).device
    names = list_images(folder)
    default_ids = {name: i + 1 for i, name in enumerate(names)}
    results = []
    for start in tqdm(range(0, len(names), batch_size), desc="predict", disable=not progress, leave=False):
        batch = names[start:start + batch_size]
        images = [read_image(os.path.join(folder, n)).to(device) for n in batch]
        for name, out in zip(batch, model(images)):
            image_id = (image_ids or default_ids)[name]
            for box, score, label in zip(out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist()):
                if score < score_threshold or label not in label_to_cat_id:
                    continue
                x1, y1, x2, y2 = box
                results.append({"image_id": image_id, "file_name": name, "category_id": int(label_to_cat_id[label]),
                                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                                "score": round(float(score), 5)})
    return results


def write_results(results: list[dict], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(results, f)
    os.replace(path + ".tmp", path)
