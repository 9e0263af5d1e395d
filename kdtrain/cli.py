"""Command line: ``python -m kdtrain [--debug] [COMMAND] ...``, COMMAND one of train, eval, predict,
pseudo-label, two-step, demo, benchmark, visualize, plot, yolo.

No subcommand runs the demo. This module builds the parser and imports no torch, so ``--help``
answers at once; kdtrain/commands.py loads the heavy modules after parsing. Each default shown
in the help comes from the config dataclasses (kdtrain/config.py) through ``add``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from kdtrain import commands
from kdtrain.arg_types import key_value
from kdtrain.architectures import ARCHITECTURES
from kdtrain.config import (CACHE_DIR_ENV, CHOICES, DEFAULT_ITERATIONS, DEMO_OUTPUT_DIRS, BenchmarkConfig,
                            DemoConfig, PlotConfig, PseudoLabelConfig, TrainConfig, TwoStepConfig,
                            VisualizeConfig)
from kdtrain.dependencies import missing_dependency
from kdtrain.distill.recipes import DEFAULT_WEIGHTS, RECIPES
from kdtrain.errors import UsageError
from kdtrain.yolo.cli import add_yolo_parser

S = argparse.SUPPRESS  # train flags not given stay absent, so config-file values survive


def field_default(config, name: str):
    """The dataclass field's default (a default factory is called); None when it has none."""
    field = {f.name: f for f in dataclasses.fields(config)}[name]
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None if field.default is dataclasses.MISSING else field.default


def show_default(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def add(group, flag: str, help: str, config=None, field: str | None = None, **kw):
    """add_argument whose help ends in "(default: X)".

    X is ``default`` when given here, else ``config``'s default of ``field`` (the flag's dest by
    default), which also becomes the argparse default unless the parser suppresses defaults.
    Nothing is appended for None, empty and boolean-switch defaults: the help says in words
    what an unset option means.
    """
    dest = kw.get("dest") or flag.lstrip("-").replace("-", "_")
    value = kw.get("default")
    if "default" not in kw and config is not None:
        value = field_default(config, field or dest)
        if group.argument_default is not S:
            kw["default"] = value
    if kw.get("choices") is ARCHITECTURES:
        kw["metavar"] = "ARCH"  # the list is printed once, in the group description
    elif kw.get("type") in (int, float) and "metavar" not in kw:
        kw["metavar"] = "N" if kw["type"] is int else "X"  # short usage lines
    if value not in (None, S, [], (), {}) and kw.get("action") not in ("store_true", "store_false"):
        help = f"{help} (default: {show_default(value)})"
    return group.add_argument(flag, help=help, **kw)


def _int_list(text: str) -> tuple:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _steps(text: str) -> tuple:
    steps = _int_list(text)
    if not set(steps) <= {1, 2}:
        raise argparse.ArgumentTypeError(f"steps are 1, 2 or 1,2, not {text!r}")
    return steps


def _add_runtime_flags(g, config, device: bool = True) -> None:
    """--threads, --device, --no-progress: the same in every subcommand."""
    add(g, "--threads", "CPU threads per process; unset: all cores, split between the processes of a machine",
        config, type=int)
    if device:
        add(g, "--device", "where to run; auto: cuda when a GPU is visible", config, choices=CHOICES["device"])
    add(g, "--no-progress", "no progress bars", config, dest="progress", action="store_false")


def _add_train_arguments(p):
    T = TrainConfig
    add(p, "--config", "YAML or TOML file of options (the flag names, with dashes or underscores); "
                       "flags given here override it", metavar="FILE")
    g = p.add_argument_group("data")
    add(g, "--train-images", "folder of training images (needed, as a flag or in --config)", metavar="DIR")
    add(g, "--train-ann", "COCO instances json of the training images (needed, as a flag or in --config)",
        metavar="JSON")
    add(g, "--val-images", "folder of validation images (evaluated at the end)", metavar="DIR")
    add(g, "--val-ann", "COCO instances json of the validation images", metavar="JSON")
    add(g, "--invalid-boxes", "degenerate boxes (w or h <= 0): stop with an error, or skip them", T,
        choices=CHOICES["invalid_boxes"])
    add(g, "--category-ids-as-labels", "use COCO category ids as labels (torchvision's COCO-pretrained "
                                       "91-class models) instead of 1..K", T, action="store_true")
    add(g, "--hflip", "horizontal flip probability", T, type=float)
    add(g, "--aspect-ratio-group-factor", "aspect-ratio grouping bins, -1 off", T, type=int)
    add(g, "--workers", "data loading worker processes", T, type=int)
    add(g, "--labeled-fraction", "train on this fraction of the training images only (label-scarce runs)", T,
        type=float)
    add(g, "--labeled-subset-seed", "seed choosing the labeled fraction, apart from --seed so runs share a subset",
        T, type=int)
    g = p.add_argument_group("student model", "ARCH, here and in --teacher-arch, is one of: "
                             + ", ".join(ARCHITECTURES) + ".")
    add(g, "--arch", "student detector", T, choices=ARCHITECTURES)
    add(g, "--num-classes", "classes including background; unset: from the dataset", T, type=int)
    add(g, "--weights", "torchvision detector weights, e.g. DEFAULT (downloads; classifier replaced if classes "
                        "differ)", T)
    add(g, "--weights-backbone", "torchvision backbone weights, e.g. DEFAULT (downloads)", T)
    add(g, "--init", "start from the weights of a kdtrain checkpoint", T, metavar="CKPT")
    add(g, "--min-size", "shorter image side after resize; unset: the architecture's", T, type=int)
    add(g, "--max-size", "longer image side cap after resize; unset: the architecture's", T, type=int)
    add(g, "--model-arg", "extra torchvision constructor argument, e.g. box_batch_size_per_image=128 (repeatable)",
        dest="model_kwargs_list", action="append", type=key_value, metavar="KEY=VALUE")
    g = p.add_argument_group("teacher and distillation")
    add(g, "--teacher", "teacher: a kdtrain checkpoint (model_final.pth)", T, metavar="CKPT")
    add(g, "--teacher-arch", "teacher built from torchvision instead of --teacher", T, choices=ARCHITECTURES)
    add(g, "--teacher-weights", "torchvision weights for --teacher-arch, e.g. DEFAULT (downloads)", T)
    add(g, "--recipe", f"distillation recipe(s), comma-combinable: {', '.join(RECIPES)}", T)
    add(g, "--distill-weights", "weights of the distillation losses; W may be auto (calibrated from gradient "
        "magnitudes), and a bare auto sets every term so; unset: "
        + ", ".join(f"{k}={v:g}" for k, v in DEFAULT_WEIGHTS.items()), T, metavar="TERM=W|auto,...")
    add(g, "--distill-warmup", "iterations over which the distillation weights ramp up from 0", T, type=int)
    add(g, "--distill-auto-ratio", "automatic weights: each term's gradient on the student parameters it shares "
                                   "with the detection loss, as a fraction of the detection loss's", T, type=float)
    add(g, "--distill-auto-iters", "automatic weights: first iterations that measure the gradients (the automatic "
                                   "terms are off until then; the weights are fixed after)", T, type=int)
    add(g, "--imitation-mask", "imitation on the whole feature map, or inside the boxes only", T,
        choices=CHOICES["imitation_mask"])
    add(g, "--student-scale", "low-resolution student (Chen 2017): its input is the teacher's size times this "
                              "(e.g. 0.5); the teacher sees full resolution through its own transform", T, type=float)
    g = p.add_argument_group("optimisation")
    add(g, "--iterations", f"training iterations; unset: {DEFAULT_ITERATIONS}, unless --epochs", T, type=int)
    add(g, "--epochs", "training length in epochs (instead of --iterations)", T, type=float)
    add(g, "--batch-size", "images per process per iteration", T, type=int)
    add(g, "--optimizer", "sgd uses --momentum", T, choices=CHOICES["optimizer"])
    add(g, "--lr", "peak learning rate", T, type=float)
    add(g, "--momentum", "SGD momentum", T, type=float)
    add(g, "--weight-decay", "weight decay", T, type=float)
    add(g, "--lr-schedule", "learning-rate schedule after the warm-up", T, choices=CHOICES["lr_schedule"])
    add(g, "--lr-warmup", "linear warm-up iterations", T, type=int)
    add(g, "--lr-steps", "iterations where the step schedule multiplies lr by --lr-gamma", T, type=int, nargs="+")
    add(g, "--lr-gamma", "step schedule factor", T, type=float)
    add(g, "--clip-grad", "gradient-norm clipping, 0 off", T, type=float)
    add(g, "--amp", "mixed precision on GPU (auto: bf16 where supported, else fp16); never on CPU", T,
        choices=CHOICES["amp"])
    g = p.add_argument_group("run")
    add(g, "--output-dir", "checkpoints, metrics.jsonl, eval.json, model_final.pth", T, metavar="DIR")
    add(g, "--resume", "continue a stopped run: from PATH, or from OUTPUT_DIR/checkpoint_last.pth when no path "
                       "is given", T, nargs="?", const="auto", metavar="PATH")
    add(g, "--checkpoint-every", "iterations between atomic checkpoints (checkpoint_last.pth)", T, type=int)
    add(g, "--keep-checkpoints", "keep checkpoint_last.pth when the run has finished (else it is deleted once "
                                 "model_final.pth is written)", T, action="store_true")
    add(g, "--log-every", "iterations between metrics.jsonl records", T, type=int)
    add(g, "--eval-batch-size", "images per batch in evaluation", T, type=int)
    add(g, "--no-eval", "skip the final evaluation", T, action="store_true")
    add(g, "--tensorboard", "also log to OUTPUT_DIR/tb (needs tensorboard)", T, action="store_true")
    add(g, "--seed", "random seed", T, type=int)
    _add_runtime_flags(g, T)


def _add_train_parser(sub):
    p = sub.add_parser("train", help="train a detector (teacher or student), optionally with distillation",
                       argument_default=S, usage="%(prog)s --train-images DIR --train-ann JSON [options]",
                       description="Train a torchvision detector on COCO-format data. Values come from the "
                                   "defaults shown, then --config, then these flags.")
    _add_train_arguments(p)
    p.set_defaults(run=commands.run_train)


def _add_two_step_parser(sub):
    p = sub.add_parser("two-step", help="pseudo-label distillation then fine-tuning (Banitalebi 2021)",
                       argument_default=S, usage="%(prog)s --train-images DIR --train-ann JSON "
                                                 "(--teacher CKPT | --pseudo-ann JSON) [options]",
                       description="Step 1 trains the student on the teacher's pseudo-labels of --unlabeled-images "
                                   "with feature imitation masked by the teacher's boxes; step 2 fine-tunes it on "
                                   "--train-images/--train-ann (optionally --labeled-fraction). Outputs go to "
                                   "OUTPUT_DIR/step1 and OUTPUT_DIR/step2. All train flags apply to both steps.")
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
    _add_train_arguments(p)
    p.set_defaults(run=commands.run_two_step)


def _add_eval_parser(sub):
    p = sub.add_parser("eval", help="COCO metrics of a checkpoint on a dataset",
                       usage="%(prog)s --checkpoint CKPT --images DIR --ann JSON [options]",
                       description="COCO box metrics (mAP, AP50, AP75, APs, APm, APl) of a kdtrain checkpoint on a "
                                   "COCO-format dataset, printed as json; a size group without objects is null.")
    T = TrainConfig
    add(p, "--checkpoint", "kdtrain checkpoint (model_final.pth or checkpoint_last.pth)", required=True,
        metavar="CKPT")
    add(p, "--images", "image folder", required=True, metavar="DIR")
    add(p, "--ann", "COCO instances json", required=True, metavar="JSON")
    add(p, "--batch-size", "images per batch", T, field="eval_batch_size", type=int)
    add(p, "--workers", "image loading worker processes", T, type=int)
    add(p, "--category-ids-as-labels", "as in train; only for a checkpoint without a label map (kdtrain's have "
                                       "one and it is used)", T, action="store_true")
    add(p, "--output", "also write the metrics json here", metavar="JSON")
    _add_runtime_flags(p, T)
    p.set_defaults(run=commands.run_eval)


def _add_predict_parser(sub):
    p = sub.add_parser("predict", help="detections for an image folder, as COCO results json",
                       usage="%(prog)s --checkpoint CKPT --images DIR --output JSON [options]",
                       description="Run a kdtrain checkpoint on every image of a folder and write the detections "
                                   "as a COCO results json.")
    add(p, "--checkpoint", "kdtrain checkpoint", required=True, metavar="CKPT")
    add(p, "--images", "image folder", required=True, metavar="DIR")
    add(p, "--output", "results json to write", required=True, metavar="JSON")
    add(p, "--ann", "COCO json whose image ids to use (matched by file name); unset: 1..N in name order",
        metavar="JSON")
    add(p, "--score-threshold", "keep detections scoring at least this", type=float, default=0.05)
    add(p, "--batch-size", "images per batch", TrainConfig, field="eval_batch_size", type=int)
    _add_runtime_flags(p, TrainConfig)
    p.set_defaults(run=commands.run_predict)


def _add_pseudo_label_parser(sub):
    p = sub.add_parser("pseudo-label", help="teachers label an image folder: COCO json of pseudo-labels",
                       usage="%(prog)s --teacher CKPT [--teacher CKPT ...] --images DIR --output JSON [options]",
                       description="One or more teachers predict on unlabeled images; their boxes are merged "
                                   "(union) in the student's label space and written as a COCO instances json. "
                                   "Under torchrun each rank labels a shard and rank 0 writes.")
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
    _add_runtime_flags(p, TrainConfig)
    p.set_defaults(run=commands.run_pseudo_label)


def _add_demo_parser(sub):
    p = sub.add_parser("demo", help="built-in offline demo (the default when no subcommand is given)",
                       usage="%(prog)s [options]",
                       description="Teacher, student, and the student distilled from the teacher, trained and "
                                   "evaluated on a generated shapes dataset on CPU.")
    D = DemoConfig
    add(p, "--variant", "standard: student without vs with distillation; label-scarce: only --labeled-fraction "
                        "of the training labels, two-step pseudo-label distillation vs supervised on that part", D,
        choices=CHOICES["variant"])
    add(p, "--output-dir", "students, results json and plot; unset: "
        + ", ".join(f"{folder} ({variant})" for variant, folder in DEMO_OUTPUT_DIRS.items()), default=None,
        metavar="DIR")
    add(p, "--cache-dir", f"generated dataset and cached teacher, kept between runs ({CACHE_DIR_ENV} in the "
                          "environment sets it)", D, metavar="DIR")
    add(p, "--recipe", "distillation recipe of the distilled student", D)
    add(p, "--distill-weights", "as in train", D)
    add(p, "--distill-warmup", "as in train", D, type=int)
    add(p, "--imitation-mask", "as in train", D, choices=CHOICES["imitation_mask"])
    add(p, "--labeled-fraction", "label-scarce: fraction of training images that keep their labels", D, type=float)
    add(p, "--step1-share", "label-scarce: share of the student budget the two-step student spends on "
                            "pseudo-labels", D, type=float)
    add(p, "--pseudo-score-threshold", "label-scarce: teacher score threshold for pseudo-labels", D, type=float)
    add(p, "--teacher-iterations", "teacher training iterations (a cached teacher trained so is reused)", D,
        type=int)
    add(p, "--student-iterations", "training iterations of each student (one budget for all)", D, type=int)
    add(p, "--seeds", "comma-separated student seeds: the table averages them, the plot shows each", D,
        type=_int_list, metavar="N[,N...]")
    add(p, "--image-size", "side of the generated square images in pixels", D, type=int)
    add(p, "--train-images", "number of generated training images", D, type=int)
    add(p, "--val-images", "number of generated validation images", D, type=int)
    add(p, "--batch-size", "images per training iteration", D, type=int)
    add(p, "--workers", "data loading worker processes", D, type=int)
    add(p, "--retrain-teacher", "ignore the cached teacher", D, action="store_true")
    _add_runtime_flags(p, D, device=False)
    p.set_defaults(run=commands.run_demo)


def _add_benchmark_parser(sub):
    p = sub.add_parser("benchmark", help="efficacy table: recipes x seeds at one budget, gains over no distillation",
                       usage="%(prog)s [--recipes RECIPE[:WEIGHTS] ...] [--seeds N,...] [options]",
                       description="Trains the same student with each recipe and seed at an equal budget from one "
                                   "shared teacher and tabulates mean ± std of mAP, AP50, APs, the paired per-seed "
                                   "gain over the undistilled student, wall time and distillation cost per step "
                                   "(OUTPUT_DIR/benchmark_results.json, .md, .png). Started again with the same "
                                   "settings, it skips the runs that finished. Default data and teacher: the demo's.")
    B = BenchmarkConfig
    add(p, "--recipes", "rows, each RECIPE or RECIPE:WEIGHTS (WEIGHTS as --distill-weights of train, e.g. fgd:auto "
                        "or chen2017:chen_rcn=auto); none is the baseline of the gains", B, nargs="+", metavar="RECIPE[:WEIGHTS]")
    add(p, "--seeds", "comma-separated seeds; every recipe runs each", B, type=_int_list, metavar="N[,N...]")
    add(p, "--iterations", "training iterations of every student", B, type=int)
    add(p, "--output-dir", "run folders, results json, markdown table and plot", B, metavar="DIR")
    g = p.add_argument_group("own data", "all five, or none for the demo's generated data and cached teacher")
    add(g, "--train-images", "training image folder", B, metavar="DIR")
    add(g, "--train-ann", "COCO instances json of the training images", B, metavar="JSON")
    add(g, "--val-images", "validation image folder", B, metavar="DIR")
    add(g, "--val-ann", "COCO instances json of the validation images", B, metavar="JSON")
    add(g, "--teacher", "teacher shared by every run (a kdtrain checkpoint)", B, metavar="CKPT")
    g = p.add_argument_group("students (the demo's: " + DemoConfig.student_arch + ")")
    add(g, "--image-size", "students' input size (min and max side); with the built-in data also the generated "
                           "images' side", B, type=int)
    add(g, "--student-anchors", "anchor size per FPN level", B, type=_int_list, metavar="N,N,N,N")
    add(g, "--batch-size", "images per iteration", B, type=int)
    add(g, "--lr", "peak learning rate", B, type=float)
    add(g, "--distill-warmup", "as in train", B, type=int)
    add(g, "--imitation-mask", "as in train", B, choices=CHOICES["imitation_mask"])
    add(g, "--distill-auto-ratio", "as in train (rows with auto weights)", B, type=float)
    add(g, "--distill-auto-iters", "as in train (rows with auto weights)", B, type=int)
    add(g, "--keep-models", "keep each run's model_final.pth (else deleted once evaluated and timed)", B,
        action="store_true")
    g = p.add_argument_group("built-in data (as the demo's; its cached teacher is reused when these match)")
    add(g, "--cache-dir", f"generated dataset and cached teacher ({CACHE_DIR_ENV} in the environment sets it)", B,
        metavar="DIR")
    add(g, "--generated-train-images", "number of generated training images", B, type=int)
    add(g, "--generated-val-images", "number of generated validation images", B, type=int)
    add(g, "--teacher-iterations", "iterations of the demo teacher (trained once when not cached)", B, type=int)
    add(g, "--workers", "data loading worker processes", B, type=int)
    _add_runtime_flags(g, B, device=False)
    p.set_defaults(run=commands.run_benchmark)


def _add_visualize_parser(sub):
    p = sub.add_parser("visualize", help="pictures of what is distilled: attention, FGD masks, imitation error",
                       usage="%(prog)s --student CKPT --teacher CKPT --images DIR --ann JSON [options]",
                       description="For the first images of --ann and each student/teacher level pair of one "
                                   "stride, a PNG (as FGD's Fig. 5): the image with its boxes, both networks' "
                                   "spatial and channel attention, FGD's foreground and background masks and the "
                                   "per-pixel imitation error of the channel-standardised maps (PKD's "
                                   "normalisation: its mean is kdops.pkd_loss; n/a when the channel counts differ).")
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
    _add_runtime_flags(p, V)
    p.set_defaults(run=commands.run_visualize)


def _add_plot_parser(sub):
    p = sub.add_parser("plot", help="loss curves of a training run from its metrics.jsonl",
                       usage="%(prog)s RUN_DIR [--output PNG]",
                       description="Draws each detection loss and the total (left) and each weighted distillation "
                                   "term distill_* (right) of RUN_DIR/metrics.jsonl against the iteration.")
    add(p, "run_dir", "a train run's --output-dir (two-step: its step1/ or step2/)", metavar="RUN_DIR")
    add(p, "--output", "PNG to write; unset: RUN_DIR/losses.png", PlotConfig, metavar="PNG")
    p.set_defaults(run=commands.run_plot)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kdtrain",
        description="Knowledge-distillation trainer for torchvision detectors (losses from kdops). "
                    "With no subcommand it runs the built-in offline demo.",
        epilog="python -m kdtrain COMMAND --help lists the flags of a command.")
    parser.add_argument("--debug", action="store_true",
                        help="on a usage error (bad flag value, missing file), show the traceback too")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_parser in (_add_train_parser, _add_eval_parser, _add_predict_parser, _add_pseudo_label_parser,
                       _add_two_step_parser, _add_demo_parser, _add_benchmark_parser, _add_visualize_parser,
                       _add_plot_parser, lambda sub: add_yolo_parser(sub, add)):
        add_parser(sub)
    return parser


def subcommand_parsers(parser: argparse.ArgumentParser) -> dict:
    """{name: parser} of the subcommands (argparse keeps them in its subparsers action)."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:  # no subcommand: the demo
        args, extra = parser.parse_known_args([*argv, "demo"])
    command_parser = subcommand_parsers(parser)[args.command]
    if extra:  # said with the subcommand's usage line, not the top-level one
        command_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    missing = missing_dependency()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    try:
        return args.run(args)
    except UsageError as e:
        if args.debug:
            raise
        command_parser.error(str(e))  # usage line, message, exit code 2
