"""COCO json -> YOLO-format folders (images/, labels/ of normalised "class cx cy w h" lines, data.yaml),
and the built-in shapes data in that format. Needs neither torch nor ultralytics."""

from __future__ import annotations

import json
import os
import shutil

import yaml

from kdtrain.errors import UsageError, require_dir, require_file


def coco_to_yolo(ann_path: str, images_dir: str, out_root: str, split: str) -> list[str]:
    """Write out_root/images/<split>/ (copies) and out_root/labels/<split>/*.txt from a COCO instances json.

    Classes are the json's categories in id order, numbered from 0; crowd and degenerate boxes
    (w or h <= 0) are left out, boxes are clipped to the image. Returns the class names.
    """
    require_file(ann_path, "COCO json")
    require_dir(images_dir, "image folder")
    with open(ann_path) as f:
        coco = json.load(f)
    categories = sorted(coco.get("categories", []), key=lambda c: c["id"])
    if not categories:
        raise UsageError(f"{ann_path}: no categories")
    index = {c["id"]: i for i, c in enumerate(categories)}
    boxes: dict = {}
    for a in coco.get("annotations", []):
        if a.get("iscrowd", 0):
            continue
        boxes.setdefault(a["image_id"], []).append(a)
    image_out, label_out = (os.path.join(out_root, kind, split) for kind in ("images", "labels"))
    os.makedirs(image_out, exist_ok=True)
    os.makedirs(label_out, exist_ok=True)
    for image in coco.get("images", []):
        src = os.path.join(images_dir, image["file_name"])
        name = os.path.basename(image["file_name"])
        shutil.copyfile(require_file(src, "image"), os.path.join(image_out, name))
        W, H = float(image["width"]), float(image["height"])
        lines = []
        for a in boxes.get(image["id"], []):
            x, y, w, h = a["bbox"]
            x1, y1, x2, y2 = max(0.0, x), max(0.0, y), min(W, x + w), min(H, y + h)
            if x2 <= x1 or y2 <= y1:
                continue
            cx, cy, bw, bh = (x1 + x2) / 2 / W, (y1 + y2) / 2 / H, (x2 - x1) / W, (y2 - y1) / H
            lines.append(f"{index[a['category_id']]} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}")
        stem = os.path.splitext(name)[0]
        with open(os.path.join(label_out, stem + ".txt"), "w") as f:  # an empty file: an image without objects
            f.write("\n".join(lines) + ("\n" if lines else ""))
    return [c["name"] for c in categories]


def write_data_yaml(out_root: str, names: list[str], splits=("train", "val")) -> str:
    """out_root/data.yaml naming the image folders (absolute) and the classes."""
    path = os.path.join(out_root, "data.yaml")
    data = {"path": os.path.abspath(out_root), **{s: f"images/{s}" for s in splits},
            "names": dict(enumerate(names))}
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return path


def convert(train_images: str, train_ann: str, val_images: str, val_ann: str, out_root: str) -> str:
    """Both splits of a COCO dataset in YOLO format under out_root; returns data.yaml."""
    names = coco_to_yolo(train_ann, train_images, out_root, "train")
    if coco_to_yolo(val_ann, val_images, out_root, "val") != names:
        raise UsageError(f"{train_ann} and {val_ann} have different categories")
    return write_data_yaml(out_root, names)


def shapes_data_yaml(root: str, train_images: int = 600, val_images: int = 150, size: int = 160,
                     seed: int = 0) -> str:
    """The built-in shapes data (kdtrain.data.synthetic, COCO json under root/coco) in YOLO format under
    root/yolo, made once and reused; returns its data.yaml."""
    from kdtrain.data.synthetic import make_shapes_dataset

    out = os.path.join(root, "yolo")
    done = os.path.join(out, "data.yaml")
    if os.path.isfile(done):
        return done
    paths = make_shapes_dataset(os.path.join(root, "coco"), train_images=train_images, val_images=val_images,
                                size=size, seed=seed)
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    convert(paths["train"]["images"], paths["train"]["ann"], paths["val"]["images"], paths["val"]["ann"], tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return write_data_yaml(out, _names(done))  # again: its "path" named the temporary folder


def _names(data_yaml: str) -> list[str]:
    with open(data_yaml) as f:
        names = yaml.safe_load(f)["names"]
    return [names[i] for i in sorted(names)]
