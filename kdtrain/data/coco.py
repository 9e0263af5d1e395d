"""COCO-format detection dataset (image folder + instances json).

Validation happens once at construction so a bad dataset fails before training
starts, with a message naming the file, the json key or the annotation at fault.
"""

from __future__ import annotations

import math
import os
from typing import Optional

import torch
from PIL import Image, UnidentifiedImageError

from kdtrain.config import check_range
from kdtrain.data.coco_json import DatasetError, check_unique, entries, integer, load_coco_json, optional_size, \
    require
from kdtrain.data.images import read_image

__all__ = ["CocoDetection", "DatasetError", "collate", "keep_labeled_fraction", "load_coco_json"]


class CocoDetection(torch.utils.data.Dataset):
    """Yields (image float tensor CxHxW in [0,1], target dict) pairs.

    Labels are contiguous 1..K in sorted category-id order (0 is background),
    unless ``category_ids_as_labels`` keeps COCO ids as labels (what torchvision's
    COCO-pretrained detectors expect, with 91 classes; the ids must then be >= 1).
    ``scoring``: the json is also the ground truth of a COCO evaluation (pycocotools), which
    reads every annotation's ``id``, ``area`` and ``iscrowd``: they are required.
    """

    def __init__(
        self,
        images_dir: str,
        ann_file: str,
        train: bool = False,
        hflip_prob: float = 0.5,
        invalid_boxes: str = "error",
        category_ids_as_labels: bool = False,
        require_annotations: Optional[bool] = None,
        scoring: bool = False,
    ):
        if invalid_boxes not in ("error", "skip"):
            raise ValueError("invalid_boxes must be 'error' or 'skip'")
        self.images_dir = images_dir
        self.ann_file = ann_file
        self.train = train
        self.hflip_prob = hflip_prob if train else 0.0
        self.augment_seed = 0  # set per epoch by the batch stream
        data = load_coco_json(ann_file)
        self.categories = self._read_categories(data, ann_file)
        cat_ids = [c["id"] for c in self.categories]
        if category_ids_as_labels:
            if min(cat_ids) < 1:
                raise DatasetError(f"{ann_file}: category id {min(cat_ids)} cannot be a label with "
                                   "--category-ids-as-labels (label 0 is the background); the ids must be >= 1, "
                                   "or drop the flag to number the categories 1..K")
            self.cat_id_to_label = {c: c for c in cat_ids}
        else:
            self.cat_id_to_label = {c: i + 1 for i, c in enumerate(cat_ids)}
        self.label_to_cat_id = {v: k for k, v in self.cat_id_to_label.items()}
        self.num_classes = max(self.cat_id_to_label.values()) + 1

        self.images = []
        index_of_id, first_of_id = {}, {}
        for where, img in entries(data, "images", ann_file):
            image_id = integer(img, "id", where)
            check_unique(first_of_id, image_id, "image id", where)  # else one image's boxes land on another
            file_name = str(require(img, "file_name", where))
            path = os.path.join(images_dir, file_name)
            if not os.path.isfile(path):
                raise DatasetError(f"image not found: {path} (image id {image_id} in {ann_file})")
            index_of_id[image_id] = len(self.images)
            self.images.append({"id": image_id, "file_name": file_name, "width": optional_size(img, "width", where),
                                "height": optional_size(img, "height", where)})
        if not self.images:
            raise DatasetError(f"{ann_file}: 'images' is empty")

        self.boxes = [[] for _ in self.images]
        self.labels = [[] for _ in self.images]
        self.skipped_annotations = 0
        first_of_ann = {}
        for where, ann in entries(data, "annotations", ann_file):
            if scoring:
                self._check_scoring_fields(ann, where)
            if "id" in ann:  # pycocotools indexes by it: a duplicate hides a ground-truth box from evaluation
                where = f"{where} (id {ann['id']!r})"
                check_unique(first_of_ann, integer(ann, "id", where), "annotation id", where)
            image_id = integer(ann, "image_id", where)
            if image_id not in index_of_id:
                raise DatasetError(f"{where}: image_id {image_id} is not in 'images'")
            cat = integer(ann, "category_id", where)
            if cat not in self.cat_id_to_label:
                raise DatasetError(f"{where}: category_id {cat} is not in 'categories'")
            if ann.get("iscrowd", 0):
                continue  # crowd regions are not training targets (as in torchvision's references)
            k = index_of_id[image_id]
            box = self._checked_box(ann, where, k, invalid_boxes)
            if box is None:
                self.skipped_annotations += 1
                continue
            self.boxes[k].append(box)
            self.labels[k].append(self.cat_id_to_label[cat])
        if require_annotations is None:
            require_annotations = train
        if require_annotations and not any(self.boxes):
            raise DatasetError(f"{ann_file}: the annotation list is empty, there is nothing to train on")

    @staticmethod
    def _check_scoring_fields(ann: dict, where: str) -> None:
        for key in ("id", "area", "iscrowd"):
            if key not in ann:
                raise DatasetError(f"{where}: missing key {key!r}, which COCO scoring reads (every annotation of an "
                                   "evaluation json needs 'id', 'area' (w*h) and 'iscrowd' (0 or 1))")
        area, crowd = ann["area"], ann["iscrowd"]
        if isinstance(area, bool) or not isinstance(area, (int, float)) or not math.isfinite(area) or area < 0:
            raise DatasetError(f"{where}: 'area' must be a finite number >= 0, got {area!r}")
        if crowd not in (0, 1) or isinstance(crowd, float):
            raise DatasetError(f"{where}: 'iscrowd' must be 0 or 1, got {crowd!r}")

    @staticmethod
    def _read_categories(data: dict, ann_file: str) -> list[dict]:
        categories, first_of_id = [], {}
        for where, c in entries(data, "categories", ann_file):
            cat_id = integer(c, "id", where)
            check_unique(first_of_id, cat_id, "category id", where)
            categories.append({"id": cat_id, "name": str(c.get("name", cat_id))})
        if not categories:
            raise DatasetError(f"{ann_file}: 'categories' is empty")
        return sorted(categories, key=lambda c: c["id"])

    def _checked_box(self, ann: dict, where: str, index: int, invalid_boxes: str):
        """[x1, y1, x2, y2]; None for a box to skip: degenerate, or entirely outside its image."""
        bbox = require(ann, "bbox", where)
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)):
            raise DatasetError(f"{where}: 'bbox' must be 4 finite numbers [x, y, w, h], got {bbox!r}")
        x, y, w, h = (float(v) for v in bbox)
        width, height = self.image_size(index)
        # Boxes are clipped to the image when loaded: one with no area left would vanish unnoticed.
        problem = ("degenerate box (width and height must be > 0)" if w <= 0 or h <= 0 else
                   f"box entirely outside its {width}x{height} image"
                   if min(x + w, width) <= max(x, 0) or min(y + h, height) <= max(y, 0) else None)
        if problem is None:
            return [x, y, x + w, y + h]
        if invalid_boxes == "skip":
            return None
        raise DatasetError(f"{where}: {problem}: {bbox!r} in image {self.images[index]['file_name']}; "
                           "pass --invalid-boxes skip to drop such boxes")

    def image_path(self, index: int) -> str:
        return os.path.join(self.images_dir, self.images[index]["file_name"])

    def image_size(self, index: int) -> tuple:
        """(width, height) from the json, else from the image header (read once)."""
        info = self.images[index]
        if not (info["width"] and info["height"]):
            try:
                with Image.open(self.image_path(index)) as im:
                    info["width"], info["height"] = im.size
            except (UnidentifiedImageError, OSError) as e:
                raise DatasetError(f"cannot read image {self.image_path(index)}: {e}") from None
        return info["width"], info["height"]

    def __len__(self) -> int:
        return len(self.images)

    def aspect_ratio(self, index: int) -> float:
        """Width / height without opening the image when the json has the sizes."""
        width, height = self.image_size(index)
        return float(width) / float(height)

    def load_image(self, index: int) -> torch.Tensor:
        return read_image(self.image_path(index))

    def __getitem__(self, index: int):
        image = self.load_image(index)
        boxes = torch.tensor(self.boxes[index], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor(self.labels[index], dtype=torch.int64)
        height, width = image.shape[-2:]
        # Clip to the image: annotation tools often overshoot by a pixel.
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, labels = boxes[keep], labels[keep]
        flip_rng = torch.Generator().manual_seed(hash((self.augment_seed, index)) & 0x7FFFFFFF)
        if self.hflip_prob > 0 and torch.rand((), generator=flip_rng) < self.hflip_prob:
            image = image.flip(-1)
            boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        target = {"boxes": boxes, "labels": labels, "image_id": self.images[index]["id"]}
        return image, target


def collate(batch):
    return tuple(zip(*batch))


# ---- a labeled fraction of the dataset (label-scarce training), chosen reproducibly -------------------------
def labeled_image_indices(num_images: int, fraction: float, seed: int) -> list[int]:
    """ceil(fraction * N) image indices, the same for every run with this seed (so baselines compare)."""
    check_range("labeled_fraction", fraction)
    count = max(1, math.ceil(fraction * num_images))
    order = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[:count])


def keep_labeled_fraction(dataset, fraction: float, seed: int):
    """Restrict a CocoDetection to its labeled fraction in place; returns it."""
    if fraction >= 1.0:
        return dataset
    keep = labeled_image_indices(len(dataset.images), fraction, seed)
    dataset.images = [dataset.images[i] for i in keep]
    dataset.boxes = [dataset.boxes[i] for i in keep]
    dataset.labels = [dataset.labels[i] for i in keep]
    if not any(dataset.boxes):
        raise DatasetError(f"{dataset.ann_file}: the labeled fraction {fraction} holds no annotation")
    return dataset
