"""``python -m kdtrain pseudo-label``: teachers label an image folder; their boxes merge into one COCO json
(kdtrain/pseudo/labeler.py)."""

from __future__ import annotations

import os

from kdtrain.commands.flags import add, add_runtime_flags, check_flags, config_from
from kdtrain.config import PseudoLabelConfig, TrainConfig
from kdtrain.errors import require_dir, require_file, require_writable_file


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "pseudo-label", help="teachers label an image folder: COCO json of pseudo-labels",
        usage="%(prog)s --teacher CKPT [--teacher CKPT ...] --images DIR --output JSON [options]",
        description="One or more teachers predict on unlabeled images; their boxes are merged (union) in the "
                    "student's label space and written as a COCO instances json. Under torchrun each rank labels "
                    "a shard and rank 0 writes.")
    P = PseudoLabelConfig
    add(p, "--teacher", "kdtrain teacher checkpoint (repeat for several teachers)", dest="teachers",
        action="append", required=True, metavar="CKPT")
    add(p, "--images", "folder of images to label", required=True, metavar="DIR")
    add(p, "--output", "COCO json to write", required=True, metavar="JSON")
    add(p, "--class-map", "JSON/YAML {teacher class name or id: student class name or null}: once for all "
                          "teachers or once per teacher in --teacher order; unnamed classes are dropped", P,
        dest="class_maps", action="append", metavar="FILE")
    add(p, "--categories-from", "the student's categories (ids and names) from this json; unset: the mapped "
                                "names, ids 1..K", P, metavar="COCO_JSON")
    add(p, "--score-threshold", "keep teacher boxes scoring at least this", P, type=float)
    add(p, "--nms-iou", "class-wise NMS IoU of each teacher's boxes", P, type=float)
    add(p, "--max-detections", "boxes per teacher and image", P, type=int)
    add(p, "--merge-nms-iou", "NMS IoU over the merged teachers' boxes; unset: off (the paper found it does "
                              "not help)", P, type=float)
    add(p, "--keep-empty", "keep images without any box (as background) instead of dropping them, as the "
                           "paper does", P, action="store_true")
    add(p, "--batch-size", "images per batch", P, type=int)
    add(p, "--workers", "image loading worker processes", P, type=int)
    add_runtime_flags(p, TrainConfig)
    p.set_defaults(run=run)


def run(args) -> int:
    for path in args.teachers:
        require_file(path, "--teacher")
    require_dir(args.images, "--images")
    for path in args.class_maps:
        require_file(path, "--class-map")
    if args.categories_from:
        require_file(args.categories_from, "--categories-from")
    check_flags(args, batch_size="batch_size", workers="workers", threads="threads", score_threshold="score_threshold",
                nms_iou="nms_iou", merge_nms_iou="merge_nms_iou", max_detections="max_detections")
    require_writable_file(args.output, "--output")
    from kdtrain.distributed import cleanup, init_distributed
    from kdtrain.pseudo.labeler import pseudo_label
    from kdtrain.runtime import set_threads

    info = init_distributed(args.device)
    try:
        set_threads(args.threads, int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size)))
        pseudo_label(config_from(PseudoLabelConfig, args), info)
    finally:
        cleanup(info)
    return 0
