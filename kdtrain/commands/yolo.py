"""``python -m kdtrain yolo``: a YOLO student distilled inside ultralytics' training loop (kdtrain/yolo/).

Imports neither torch nor ultralytics until the command runs.
"""

from __future__ import annotations

import json
import os
import sys

from kdtrain.commands.flags import add, config_from, key_value
from kdtrain.config import YOLO_RECIPES, YoloConfig
from kdtrain.errors import UsageError, require_file


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "yolo", help="distil a YOLO student inside ultralytics' training loop (needs ultralytics)",
        usage="%(prog)s --teacher YAML|PT|PTH [--student YAML] [--recipe RECIPE] [--data YAML] [options]",
        description="Train an ultralytics YOLO detect model (built from its yaml, or a .pt) with kdops' feature "
                    "distillation on the Detect head's inputs, inside ultralytics' DetectionTrainer, offline (nothing "
                    "downloaded). Needs ultralytics (AGPL-3.0, optional: pip install ultralytics). Prints the final "
                    "box mAP50-95 and mAP50. See docs/yolo.md.")
    Y = YoloConfig
    g = p.add_argument_group("models")
    add(g, "--student", "YOLO student: an ultralytics model yaml (random init) or .pt", Y, metavar="YAML|PT")
    add(g, "--teacher", "teacher: an ultralytics .pt (e.g. a trained runs/.../weights/best.pt), a YOLO yaml "
                        "(random weights: a smoke test) or a kdtrain torchvision checkpoint .pth (its FPN levels); "
                        "needed unless --recipe none", Y, metavar="YAML|PT|PTH")
    add(g, "--recipe", "feature loss on the neck maps (P3-P5, paired by stride); none: the undistilled twin", Y,
        choices=YOLO_RECIPES)
    add(g, "--weight", "weight of the distillation loss; unset: kdtrain's default for the recipe", Y, type=float)
    g = p.add_argument_group("data", "--data, or the built-in shapes data generated in YOLO format")
    add(g, "--data", "ultralytics data.yaml; its images must be on disk (a download: entry is not followed)", Y,
        metavar="YAML")
    add(g, "--cache-dir", "where the built-in data is generated and kept", Y, metavar="DIR")
    add(g, "--generated-train-images", "built-in data: training images", Y, type=int)
    add(g, "--generated-val-images", "built-in data: validation images", Y, type=int)
    add(g, "--generated-image-size", "built-in data: image side in pixels", Y, type=int)
    g = p.add_argument_group("training (ultralytics' arguments)")
    add(g, "--epochs", "epochs", Y, type=int)
    add(g, "--imgsz", "training and validation image size (a multiple of 32)", Y, type=int)
    add(g, "--batch", "images per batch", Y, type=int)
    add(g, "--workers", "data loading workers", Y, type=int)
    add(g, "--device", "cpu, 0, ...; unset: ultralytics' choice", Y)
    add(g, "--seed", "random seed", Y, type=int)
    add(g, "--output-dir", "ultralytics' project folder; the run goes to OUTPUT_DIR/NAME", Y, metavar="DIR")
    add(g, "--name", "run folder name; unset: the recipe", Y)
    add(g, "--ultralytics-arg", "any other ultralytics training argument, e.g. lr0=0.01 (repeatable)",
        dest="extra", action="append", type=key_value, metavar="KEY=VALUE")
    p.set_defaults(run=run)


def run(args) -> int:
    from kdtrain.yolo.offline import missing_ultralytics

    missing = missing_ultralytics()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    cfg = config_from(YoloConfig, args)
    if cfg.recipe != "none" and not cfg.teacher:
        raise UsageError(f"--recipe {cfg.recipe} needs --teacher")
    if cfg.teacher and not cfg.teacher.endswith((".yaml", ".yml")):
        require_file(cfg.teacher, "--teacher")
    if cfg.data:
        require_file(cfg.data, "--data")
        data = cfg.data
    else:
        from kdtrain.yolo.data import shapes_data_yaml

        data = shapes_data_yaml(os.path.join(cfg.cache_dir, f"shapes{cfg.generated_image_size}-"
                                             f"{cfg.generated_train_images}-{cfg.generated_val_images}"),
                                train_images=cfg.generated_train_images, val_images=cfg.generated_val_images,
                                size=cfg.generated_image_size)
    from kdtrain.yolo.trainer import train_yolo

    overrides = dict(epochs=cfg.epochs, imgsz=cfg.imgsz, batch=cfg.batch, workers=cfg.workers, seed=cfg.seed,
                     project=os.path.abspath(cfg.output_dir), name=cfg.name or cfg.recipe, exist_ok=True)
    if cfg.device is not None:
        overrides["device"] = cfg.device
    overrides.update(dict(args.extra or []))
    result = train_yolo(cfg.student, data, teacher=cfg.teacher, recipe=cfg.recipe, weight=cfg.weight, **overrides)
    print(json.dumps(result, indent=2))
    return 0
