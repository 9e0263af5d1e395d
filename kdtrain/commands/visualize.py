"""``python -m kdtrain visualize``: pictures of what is distilled (kdtrain/visualize.py)."""

from __future__ import annotations

from kdtrain.commands.flags import add, add_runtime_flags, config_from
from kdtrain.config import VisualizeConfig


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "visualize", help="pictures of what is distilled: attention, FGD masks, imitation error",
        usage="%(prog)s --student CKPT --teacher CKPT --images DIR --ann JSON [options]",
        description="For the first images of --ann and each student/teacher level pair of one stride, a PNG (as "
                    "FGD's Fig. 5): the image with its boxes, both networks' spatial and channel attention, FGD's "
                    "foreground and background masks and the per-pixel imitation error of the channel-standardised "
                    "maps (PKD's normalisation: its mean is kdops.pkd_loss; n/a when the channel counts differ).")
    V = VisualizeConfig
    add(p, "--student", "student kdtrain checkpoint", required=True, metavar="CKPT")
    add(p, "--teacher", "teacher kdtrain checkpoint", required=True, metavar="CKPT")
    add(p, "--images", "image folder", required=True, metavar="DIR")
    add(p, "--ann", "COCO instances json: which images, and the boxes drawn and masked", required=True,
        metavar="JSON")
    add(p, "--output-dir", "where the PNGs go, one per image and level pair", V, metavar="DIR")
    add(p, "--num-images", "the first N images of --ann", V, type=int)
    add(p, "--temperature", "attention softmax temperature; unset: FGD's for the student's detector family "
                            "(0.5, FCOS 0.8)", V, type=float)
    add_runtime_flags(p, V)
    p.set_defaults(run=run)


def run(args) -> int:
    cfg = config_from(VisualizeConfig, args).check()
    from kdtrain.runtime import resolve_device, set_threads
    from kdtrain.visualize import visualize

    set_threads(cfg.threads)
    visualize(cfg, resolve_device(cfg.device))
    return 0
