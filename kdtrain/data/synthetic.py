"""Deterministic procedural detection dataset written to disk in COCO format.

Five shape classes in random colours on noisy, cluttered backgrounds, sizes
from a few pixels to half the image. Small filled vs hollow shapes differ only
in fine detail, which a stride-32 student sees poorly and a stride-4..64 FPN
teacher sees well: the gap distillation is meant to close.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("disc", "ring", "square", "triangle", "cross")
# The pretraining task's classes (kdtrain/pretrain.py): the detection classes and five more, as ImageNet's
# classes include most of COCO's and many others.
PRETEXT_CLASSES = CLASSES + ("hexagon", "star", "frame", "diamond", "bar")


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    # Low-frequency colour field + pixel noise + clutter lines.
    coarse = rng.uniform(40, 215, size=(4, 4, 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR), dtype=np.float32)
    field += rng.normal(0, 8, size=field.shape)
    image = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(1, 4)):
        pts = [tuple(rng.uniform(0, size, 2)) for _ in range(2)]
        draw.line(pts, fill=tuple(int(v) for v in rng.integers(0, 255, 3)), width=int(rng.integers(1, 3)))
    return image


def _draw_shape(draw: ImageDraw.ImageDraw, cls: str, x0: float, y0: float, s: float, color, rng) -> None:
    x1, y1 = x0 + s, y0 + s
    if cls == "disc":
        draw.ellipse([x0, y0, x1, y1], fill=color)
    elif cls == "ring":
        draw.ellipse([x0, y0, x1, y1], outline=color, width=max(1, int(round(s * 0.18))))
    elif cls == "square":
        draw.rectangle([x0, y0, x1, y1], fill=color)
    elif cls == "triangle":
        draw.polygon([(x0 + s / 2, y0), (x1, y1), (x0, y1)], fill=color)
    elif cls == "cross":
        t = s * 0.3
        draw.rectangle([x0 + (s - t) / 2, y0, x0 + (s + t) / 2, y1], fill=color)
        draw.rectangle([x0, y0 + (s - t) / 2, x1, y0 + (s + t) / 2], fill=color)
    elif cls == "hexagon":
        cx, cy, r = x0 + s / 2, y0 + s / 2, s / 2
        draw.polygon([(cx + r * math.cos(k * math.pi / 3), cy + r * math.sin(k * math.pi / 3)) for k in range(6)],
                     fill=color)
    elif cls == "star":
        cx, cy = x0 + s / 2, y0 + s / 2
        draw.polygon([(cx + r * math.cos(a), cy + r * math.sin(a))
                      for k in range(10) for r, a in [((s / 2) * (1.0 if k % 2 == 0 else 0.45),
                                                       -math.pi / 2 + k * math.pi / 5)]], fill=color)
    elif cls == "frame":
        draw.rectangle([x0, y0, x1, y1], outline=color, width=max(1, int(round(s * 0.18))))
    elif cls == "diamond":
        cx, cy = x0 + s / 2, y0 + s / 2
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=color)
    elif cls == "bar":
        t = s * 0.3
        draw.rectangle([x0, y0 + (s - t) / 2, x1, y0 + (s + t) / 2], fill=color)
    else:
        raise ValueError(f"unknown shape {cls!r}")


def _overlaps(box, placed, max_iou=0.2):
    for b in placed:
        ix = max(0.0, min(box[2], b[2]) - max(box[0], b[0]))
        iy = max(0.0, min(box[3], b[3]) - max(box[1], b[1]))
        inter = ix * iy
        union = (box[2] - box[0]) * (box[3] - box[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        if inter / union > max_iou:
            return True
    return False


def render_image(rng: np.random.Generator, size: int, min_obj: int, max_obj: int, max_objects: int):
    image = _background(rng, size)
    draw = ImageDraw.Draw(image)
    objects = []
    placed = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(10):
            # Log-uniform sizes: many small objects, some large.
            s = float(math.exp(rng.uniform(math.log(min_obj), math.log(max_obj))))
            x0, y0 = rng.uniform(0, size - s, 2)
            box = [x0, y0, x0 + s, y0 + s]
            if not _overlaps(box, placed):
                break
        else:
            continue
        cls = int(rng.integers(len(CLASSES)))
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        _draw_shape(draw, CLASSES[cls], x0, y0, s, color, rng)
        placed.append(box)
        objects.append((cls, box))
    return image, objects


def render_crops(num: int, seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``num`` object-centric crops (uint8, N x size x size x 3) and their PRETEXT_CLASSES labels.

    One object per crop, 30-85% of its side, on the detection images' cluttered backgrounds.
    """
    rng = np.random.default_rng(seed)
    images = np.empty((num, size, size, 3), dtype=np.uint8)
    labels = rng.integers(len(PRETEXT_CLASSES), size=num)
    for i, cls in enumerate(labels):
        image = _background(rng, size)
        s = float(math.exp(rng.uniform(math.log(0.3 * size), math.log(0.85 * size))))
        x0, y0 = rng.uniform(0, size - s, 2)
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        _draw_shape(ImageDraw.Draw(image), PRETEXT_CLASSES[cls], x0, y0, s, color, rng)
        images[i] = np.asarray(image)
    return images, labels


def write_split(root: str, split: str, num_images: int, seed: int, size: int,
                min_obj: int, max_obj: int, max_objects: int) -> str:
    """Render one split under root/split/ and return the instances json path."""
    rng = np.random.default_rng(seed)
    image_dir = os.path.join(root, split)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        image, objects = render_image(rng, size, min_obj, max_obj, max_objects)
        name = f"{i:06d}.png"
        image.save(os.path.join(image_dir, name))
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
        for cls, (x0, y0, x1, y1) in objects:
            w, h = x1 - x0, y1 - y0
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": cls + 1,
                "bbox": [round(x0, 2), round(y0, 2), round(w, 2), round(h, 2)],
                "area": round(w * h, 2), "iscrowd": 0,
            })
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]
    ann_path = os.path.join(root, f"{split}.json")
    tmp = ann_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    os.replace(tmp, ann_path)  # the json appears last: its presence marks a complete split
    return ann_path


def make_shapes_dataset(root: str, train_images: int = 600, val_images: int = 150, size: int = 160,
                        min_obj: int = 10, max_obj: int = 64, max_objects: int = 4, seed: int = 0) -> dict:
    """Create (or reuse, if complete) the dataset; returns paths for train and val."""
    paths = {}
    for split, n, split_seed in (("train", train_images, seed), ("val", val_images, seed + 10_000)):
        ann = os.path.join(root, f"{split}.json")
        if not os.path.isfile(ann):
            write_split(root, split, n, split_seed, size, min_obj, max_obj, max_objects)
        paths[split] = {"images": os.path.join(root, split), "ann": ann}
    return paths
