"""Constants and helpers of the kdtrain tests (a unique module name: tests/ has its own conftest)."""

import os
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from kdtrain import checkpoint as ckpt_io  # noqa: E402
from kdtrain.models import ModelSpec  # noqa: E402

# Small heads keep a CPU step well under a second at 64-96 px.
TINY_KWARGS = {"box_batch_size_per_image": 32, "rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 100,
               "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50, "box_detections_per_img": 20}
STUDENT = "fasterrcnn_mobilenet_v3_large_320_fpn"
TEACHER = "fasterrcnn_resnet18_fpn"
TEACHER_ITERATIONS = 30  # the shared teacher fixture: enough to pass the distillation check
SIZE = 64

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def tiny_spec(arch=STUDENT, num_classes=6, **kw):
    return ModelSpec(arch, num_classes, min_size=SIZE, max_size=SIZE, kwargs={**TINY_KWARGS, **kw})


def train_args(data, out, *extra):
    """Argument list of a short `python -m kdtrain train` run on the tiny dataset."""
    args = ["train", "--train-images", data["train"]["images"], "--train-ann", data["train"]["ann"],
            "--val-images", data["val"]["images"], "--val-ann", data["val"]["ann"],
            "--min-size", str(SIZE), "--max-size", str(SIZE), "--batch-size", "2", "--workers", "0",
            "--lr-warmup", "2", "--lr", "0.01", "--output-dir", str(out), "--no-progress", "--log-every", "1"]
    for k, v in TINY_KWARGS.items():
        args += ["--model-arg", f"{k}={v}"]
    return args + [str(e) for e in extra]


def one_stage_train_args(data, out, *extra):
    """train_args without its Faster R-CNN --model-arg options (RetinaNet, FCOS and SSD take other ones)."""
    args = train_args(data, out, *extra)
    return [a for i, a in enumerate(args) if a != "--model-arg" and (i == 0 or args[i - 1] != "--model-arg")]


class Killed(Exception):
    pass


def kill_after_checkpoint(monkeypatch, at: int):
    """The run dies right after writing its checkpoint at iteration ``at`` (as a SIGKILL would)."""
    real = ckpt_io.atomic_save

    def save(obj, path):
        real(obj, path)
        if os.path.basename(path) == ckpt_io.LAST and obj["iteration"] == at:
            raise Killed
    monkeypatch.setattr(ckpt_io, "atomic_save", save)
