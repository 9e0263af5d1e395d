"""A one-class dataset that looks like real aerial tiles: tree crowns cut from a generated "photo".

One large image (a textured ground with a few hundred crowns, 3-12 px, some touching) is cut into
square tiles as an annotator's tiling tool would: crowns cut by a tile edge keep the part inside,
so some boxes are a pixel or two wide, and some tiles hold no crown at all. Empty tiles are what
real tiles have and the shapes generator never makes: torchvision then matches every proposal and
anchor of the image to a zero-size dummy box, whose log-size regression targets are -inf in rows
that no loss of torchvision's own reads.
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image, ImageDraw


def _photo(rng: np.random.Generator, side: int, crowns: int):
    """(RGB image, crown boxes [x1, y1, x2, y2]): crowns clustered in stands, the ground left bare elsewhere."""
    ground = rng.normal(110, 12, size=(side, side, 3)) + np.array([10.0, 5.0, -15.0])
    image = Image.fromarray(np.clip(ground, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    boxes = []
    stands = rng.uniform(0, side, size=(4, 2))
    for _ in range(crowns):
        cx, cy = stands[rng.integers(len(stands))] + rng.normal(0, side / 12, 2)
        r = float(rng.uniform(1.5, 6.0))
        box = [cx - r, cy - r, cx + r, cy + r]
        if box[0] < 0 or box[1] < 0 or box[2] > side or box[3] > side:
            continue
        green = int(rng.integers(90, 170))
        draw.ellipse(box, fill=(int(green * 0.4), green, int(green * 0.3)))
        boxes.append(box)
    return image, boxes


def _tile_boxes(boxes, x0: int, y0: int, tile: int) -> list:
    """The parts of ``boxes`` inside the tile at (x0, y0), in tile pixels, as COCO [x, y, w, h]."""
    out = []
    for x1, y1, x2, y2 in boxes:
        a, b = max(x1, x0) - x0, max(y1, y0) - y0
        c, d = min(x2, x0 + tile) - x0, min(y2, y0 + tile) - y0
        if c - a >= 0.5 and d - b >= 0.5:  # a sliver under half a pixel is not annotated
            out.append([round(a, 2), round(b, 2), round(c - a, 2), round(d - b, 2)])
    return out


def make_crown_tiles(root: str, tile: int = 64, grid: int = 4, crowns: int = 90, seed: int = 0,
                     val_tiles: int = 4) -> dict:
    """Write root/{train,val}/ tiles and their COCO jsons (one category, "crown"); returns their paths.

    The photo is ``grid`` x ``grid`` tiles; the last ``val_tiles`` tiles are the validation split.
    """
    rng = np.random.default_rng(seed)
    photo, boxes = _photo(rng, tile * grid, crowns)
    tiles = [(tx * tile, ty * tile) for ty in range(grid) for tx in range(grid)]
    splits = {"train": tiles[:-val_tiles], "val": tiles[-val_tiles:]}
    paths = {}
    for split, chosen in splits.items():
        folder = os.path.join(root, split)
        os.makedirs(folder, exist_ok=True)
        images, annotations = [], []
        for i, (x0, y0) in enumerate(chosen, start=1):
            name = f"tile_{x0:04d}_{y0:04d}.png"
            photo.crop((x0, y0, x0 + tile, y0 + tile)).save(os.path.join(folder, name))
            images.append({"id": i, "file_name": name, "width": tile, "height": tile})
            for bbox in _tile_boxes(boxes, x0, y0, tile):
                annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": 1, "bbox": bbox,
                                    "area": round(bbox[2] * bbox[3], 2), "iscrowd": 0})
        ann = os.path.join(root, f"{split}.json")
        with open(ann, "w") as f:
            json.dump({"images": images, "annotations": annotations,
                       "categories": [{"id": 1, "name": "crown"}]}, f)
        paths[split] = {"images": folder, "ann": ann}
    return paths
