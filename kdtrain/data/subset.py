"""A labeled fraction of a COCO dataset (label-scarce training), chosen reproducibly."""

from __future__ import annotations

import math

import torch

from kdtrain.data.coco import DatasetError
from kdtrain.config import check_range


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
