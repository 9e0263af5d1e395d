"""``python -m kdtrain two-step``: pseudo-label distillation, then fine-tuning (kdtrain/two_step.py)."""

from __future__ import annotations

import argparse
import dataclasses

from kdtrain.commands.flags import S, add, check_flags, int_list
from kdtrain.commands.train import add_train_arguments, print_eval, train_config
from kdtrain.config import RANGES, TwoStepConfig, check_train_config
from kdtrain.errors import require_dir, require_file

OWN_FLAGS = tuple(f.name for f in dataclasses.fields(TwoStepConfig) if f.name != "base")  # the rest: train's


def _steps(text: str) -> tuple:
    steps = int_list(text)
    if not set(steps) <= {1, 2}:
        raise argparse.ArgumentTypeError(f"steps are 1, 2 or 1,2, not {text!r}")
    return steps


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "two-step", help="pseudo-label distillation then fine-tuning (Banitalebi 2021)", argument_default=S,
        usage="%(prog)s --train-images DIR --train-ann JSON (--teacher CKPT | --pseudo-ann JSON) [options]",
        description="Step 1 trains the student on the teacher's pseudo-labels of --unlabeled-images with feature "
                    "imitation masked by the teacher's boxes; step 2 fine-tunes it on --train-images/--train-ann "
                    "(optionally --labeled-fraction). Outputs go to OUTPUT_DIR/step1 and OUTPUT_DIR/step2. All "
                    "train flags apply to both steps.")
    W = TwoStepConfig
    g = p.add_argument_group("two-step")
    add(g, "--steps", "steps to run: 1, 2 or 1,2", W, type=_steps, metavar="1,2")
    add(g, "--unlabeled-images", "step-1 image folder; unset: --train-images", W, metavar="DIR")
    add(g, "--pseudo-ann", "existing pseudo-labels json (from pseudo-label); unset: --teacher writes "
                           "OUTPUT_DIR/pseudo_labels.json", W, metavar="JSON")
    add(g, "--class-map", "as in pseudo-label", W, dest="class_maps", action="append", metavar="FILE")
    add(g, "--pseudo-score-threshold", "teacher score threshold", W, type=float)
    add(g, "--pseudo-nms-iou", "teacher NMS IoU", W, type=float)
    add(g, "--pseudo-max-detections", "teacher boxes per image", W, type=int)
    add(g, "--step1-iterations", "iterations of step 1; unset: --iterations", W, type=int)
    add(g, "--step2-iterations", "iterations of step 2; unset: --iterations", W, type=int)
    add(g, "--step2-lr", "fine-tuning learning rate; unset: --lr", W, type=float)
    add(g, "--step1-init", "step 2 alone: the step-1 student; unset: OUTPUT_DIR/step1/model_final.pth", W,
        metavar="CKPT")
    add_train_arguments(p)
    p.set_defaults(run=run)


def run(args) -> int:
    values = vars(args).copy()
    own = {k: values.pop(k) for k in OWN_FLAGS if k in values}
    check_flags(argparse.Namespace(**own), **{k: k for k in own if k in RANGES})
    base = train_config(values)
    # Each step checks its own data; the distillation options are step 1's, whose recipe is never none.
    check_train_config(dataclasses.replace(base, recipe=TwoStepConfig.step1_recipe_of(base.recipe)), need_data=False)
    if own.get("pseudo_ann"):
        require_file(own["pseudo_ann"], "--pseudo-ann")
    if own.get("unlabeled_images"):
        require_dir(own["unlabeled_images"], "--unlabeled-images")
    for path in own.get("class_maps") or []:
        require_file(path, "--class-map")
    from kdtrain.two_step import run_two_step

    for step, summary in run_two_step(TwoStepConfig(base=base, **own)).items():
        print_eval(summary, f"{step} ")
    return 0
