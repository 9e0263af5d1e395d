"""Banitalebi 2021's two-step recipe: (1) learn from the teacher's pseudo-labels, (2) fine-tune on labels.

Step 1 trains on teacher-labelled images (unlabeled data allowed) with feature
imitation masked by the teacher's boxes (docs/math.md §5, 0/1 mask of docs/math.md §2: the
pseudo-label boxes are the teacher's predicted boxes). Step 2 starts from the
step-1 student and trains on whatever ground truth exists, without the teacher.
Each step is an ordinary ``train`` run, so either can also run alone.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

from kdtrain.config import PseudoLabelConfig, TrainConfig, TwoStepConfig
from kdtrain.data.coco import DatasetError, load_coco_json
from kdtrain.distributed import barrier, init_distributed
from kdtrain.engine import FINAL, train
from kdtrain.errors import RunStopped, UsageError, require_file
from kdtrain.models import load_detector
from kdtrain.pseudo.labeler import pseudo_label


def _check_same_categories(pseudo_ann: str, labeled_ann: Optional[str]) -> None:
    if not labeled_ann:
        return
    ids = lambda path: sorted(int(c["id"]) for c in load_coco_json(path)["categories"])  # noqa: E731
    if ids(pseudo_ann) != ids(labeled_ann):
        raise DatasetError(f"{pseudo_ann}: categories differ from {labeled_ann}; write the pseudo-labels with "
                           f"--categories-from {labeled_ann} so both steps share one label space")


def ensure_pseudo_labels(c: TwoStepConfig, images: str, log=print) -> str:
    if c.pseudo_ann:
        return c.pseudo_ann
    if not c.base.teacher:
        raise UsageError("step 1 needs --pseudo-ann, or --teacher to write the pseudo-labels")
    path = os.path.join(c.base.output_dir, "pseudo_labels.json")
    if os.path.isfile(path):
        log(f"[kdtrain] reusing pseudo-labels {path}")
        return path
    info = init_distributed(c.base.device)  # under torchrun each rank labels a shard; train() reuses the group
    pseudo_label(PseudoLabelConfig(
        teachers=[c.base.teacher], images=images, output=path, class_maps=list(c.class_maps),
        categories_from=c.base.train_ann, score_threshold=c.pseudo_score_threshold, nms_iou=c.pseudo_nms_iou,
        max_detections=c.pseudo_max_detections, batch_size=c.base.eval_batch_size, workers=c.base.workers,
        progress=c.base.progress), info, log=log)
    barrier(info)
    return path


def step1_config(c: TwoStepConfig, pseudo_ann: str, images: str) -> TrainConfig:
    b = c.base
    return dataclasses.replace(
        b, train_images=images, train_ann=pseudo_ann, labeled_fraction=1.0,
        recipe=TwoStepConfig.step1_recipe_of(b.recipe),
        imitation_mask="boxes" if b.imitation_mask == "none" else b.imitation_mask,
        iterations=c.step1_iterations or b.iterations, epochs=None if c.step1_iterations else b.epochs,
        output_dir=os.path.join(b.output_dir, "step1"))


def step2_config(c: TwoStepConfig, init: str) -> TrainConfig:
    b = c.base
    _, spec, _ = load_detector(init)  # keep step 1's input size (a low-resolution student stays one)
    return dataclasses.replace(
        b, init=init, recipe="none", distill_weights=None, teacher=None, teacher_arch=None, student_scale=1.0,
        min_size=spec.min_size, max_size=spec.max_size,
        iterations=c.step2_iterations or b.iterations, epochs=None if c.step2_iterations else b.epochs,
        lr=c.step2_lr if c.step2_lr is not None else b.lr, output_dir=os.path.join(b.output_dir, "step2"))


def _named_step(step: str, run):
    """``run()``; a run that stops says which step it was."""
    try:
        return run()
    except RunStopped as e:
        raise type(e)(f"{step}: {e}") from e


def run_two_step(c: TwoStepConfig, log=print) -> dict:
    """Run the chosen steps; returns {"step1": summary, "step2": summary} for those run."""
    out = {}
    init = c.step1_init or os.path.join(c.base.output_dir, "step1", FINAL)
    if 1 in c.steps:
        images = c.unlabeled_images or c.base.train_images
        if not images:
            raise UsageError("step 1 needs --unlabeled-images (or --train-images)")
        pseudo_ann = ensure_pseudo_labels(c, images, log)
        _check_same_categories(pseudo_ann, c.base.train_ann if 2 in c.steps else None)
        log(f"[kdtrain] two-step, step 1: train on pseudo-labels {pseudo_ann}")
        out["step1"] = _named_step("step 1", lambda: train(step1_config(c, pseudo_ann, images), log=log))
        init = out["step1"]["final_checkpoint"]
    if 2 in c.steps:
        require_file(init, "step 2 starts from the step-1 student (--step1-init)")
        log(f"[kdtrain] two-step, step 2: fine-tune {init} on {c.base.train_ann}"
            + (f" (labeled fraction {c.base.labeled_fraction:g})" if c.base.labeled_fraction < 1 else ""))
        out["step2"] = _named_step("step 2", lambda: train(step2_config(c, init), log=log))
    return out
