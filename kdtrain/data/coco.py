"""COCO-format detection dataset (image folder + instances json).

Validation happens once at construction so a bad dataset fails before training
starts, with a message naming the file, the json key or the annotation at fault.
"""

from __future__ import annotations

import json
import math
import os
from typing import Optional

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.functional import pil_to_tensor

from kdtrain.errors import UsageError


class DatasetError(UsageError):
    """A COCO-format dataset that cannot be used as it is."""


_REQUIRED_TOP_KEYS = ("images", "annotations", "categories")


def load_coco_json(ann_file: str) -> dict:
    if not os.path.isfile(ann_file):
        raise DatasetError(f"annotation file not found: {ann_file}")
    with open(ann_file, "rb") as f:
        raw = f.read()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"corrupt json in {ann_file}: {e}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{ann_file}: top level must be an object with keys {list(_REQUIRED_TOP_KEYS)}")
    for key in _REQUIRED_TOP_KEYS:
        if key not in data:
            raise DatasetError(f"{ann_file}: missing key {key!r}")
        if not isinstance(data[key], list):
            raise DatasetError(f"{ann_file}: key {key!r} must be a list")
    return data


def _require(entry: dict, key: str, where: str):
    if key not in entry:
        raise DatasetError(f"{where}: missing key {key!r}")
    return entry[key]


class CocoDetection(torch.utils.data.Dataset):
    """Yields (image float tensor CxHxW in [0,1], target dict) pairs.

    Labels are contiguous 1..K in sorted category-id order (0 is background),
    unless ``category_ids_as_labels`` keeps COCO ids as labels (what torchvision's
    COCO-pretrained detectors expect, with 91 classes).
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
    ):
        if invalid_boxes not in ("error", "skip"):
            raise ValueError("invalid_boxes must be 'error' or 'skip'")
        self.images_dir = images_dir
        self.ann_file = ann_file
        self.train = train
        self.hflip_prob = hflip_prob if train else 0.0
        self.augment_seed = 0  # set per epoch by the batch stream
        data = load_coco_json(ann_file)
        self.categories = sorted(
            ({"id": int(_require(c, "id", f"{ann_file}: categories[{i}]")), "name": str(c.get("name", c["id"]))}
             for i, c in enumerate(data["categories"])),
            key=lambda c: c["id"],
        )
        if not self.categories:
            raise DatasetError(f"{ann_file}: 'categories' is empty")
        cat_ids = [c["id"] for c in self.categories]
        if category_ids_as_labels:
            self.cat_id_to_label = {c: c for c in cat_ids}
        else:
            self.cat_id_to_label = {c: i + 1 for i, c in enumerate(cat_ids)}
        self.label_to_cat_id = {v: k for k, v in self.cat_id_to_label.items()}
        self.num_classes = max(self.cat_id_to_label.values()) + 1

        self.images = []
        index_of_id = {}
        for i, img in enumerate(data["images"]):
            where = f"{ann_file}: images[{i}]"
            image_id = int(_require(img, "id", where))
            file_name = str(_require(img, "file_name", where))
            path = os.path.join(images_dir, file_name)
            if not os.path.isfile(path):
                raise DatasetError(f"image not found: {path} (image id {image_id} in {ann_file})")
            index_of_id[image_id] = len(self.images)
            self.images.append(
                {"id": image_id, "file_name": file_name, "width": img.get("width"), "height": img.get("height")}
            )
        if not self.images:
            raise DatasetError(f"{ann_file}: 'images' is empty")

        self.boxes = [[] for _ in self.images]
        self.labels = [[] for _ in self.images]
        self.skipped_annotations = 0
        for i, ann in enumerate(data["annotations"]):
            where = f"{ann_file}: annotations[{i}] (id {ann.get('id', '?')})"
            image_id = int(_require(ann, "image_id", where))
            if image_id not in index_of_id:
                raise DatasetError(f"{where}: image_id {image_id} is not in 'images'")
            cat = int(_require(ann, "category_id", where))
            if cat not in self.cat_id_to_label:
                raise DatasetError(f"{where}: category_id {cat} is not in 'categories'")
            if ann.get("iscrowd", 0):
                continue  # crowd regions are not training targets (as in torchvision's references)
            bbox = _require(ann, "bbox", where)
            if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4
                    and all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)):
                raise DatasetError(f"{where}: 'bbox' must be 4 finite numbers [x, y, w, h], got {bbox!r}")
            x, y, w, h = (float(v) for v in bbox)
            if w <= 0 or h <= 0:
                if invalid_boxes == "skip":
                    self.skipped_annotations += 1
                    continue
                raise DatasetError(
                    f"{where}: degenerate box {bbox!r} (width and height must be > 0) in image "
                    f"{self.images[index_of_id[image_id]]['file_name']}; pass --invalid-boxes skip to drop such boxes"
                )
            k = index_of_id[image_id]
            self.boxes[k].append([x, y, x + w, y + h])
            self.labels[k].append(self.cat_id_to_label[cat])
        if require_annotations is None:
            require_annotations = train
        if require_annotations and not any(self.boxes):
            raise DatasetError(f"{ann_file}: the annotation list is empty, there is nothing to train on")

    def __len__(self) -> int:
        return len(self.images)

    def aspect_ratio(self, index: int) -> float:
        """Width / height without opening the image when the json has the sizes."""
        info = self.images[index]
        if info["width"] and info["height"]:
            return float(info["width"]) / float(info["height"])
        with Image.open(os.path.join(self.images_dir, info["file_name"])) as im:
            return im.width / im.height

    def load_image(self, index: int) -> torch.Tensor:
        path = os.path.join(self.images_dir, self.images[index]["file_name"])
        try:
            with Image.open(path) as im:
                image = pil_to_tensor(im.convert("RGB"))
        except (UnidentifiedImageError, OSError) as e:
            raise DatasetError(f"cannot read image {path}: {e}") from None
        return image.float().div_(255.0)

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
