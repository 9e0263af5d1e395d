"""``python -m kdtrain train``: one training run (kdtrain/engine.py), plain or distilled, 1 or N processes.

Values come from the TrainConfig defaults, then ``--config``, then the flags given: the parser
suppresses the defaults of absent flags so that config-file values survive.
"""

from __future__ import annotations

import json

from kdtrain.architectures import ARCHITECTURES
from kdtrain.commands.flags import S, add, add_runtime_flags, key_value
from kdtrain.config import CHOICES, DEFAULT_ITERATIONS, TrainConfig, check_train_config, make_config, read_config_file
from kdtrain.distill.recipes import DEFAULT_WEIGHTS, RECIPES


def add_train_arguments(p) -> None:
    """Every TrainConfig flag (train, and each step of two-step)."""
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
    add(g, "--trust-teacher", "run although the distillation check finds the teacher no better than a random "
                              "network, or trained on other classes", T, action="store_true")
    add(g, "--grad-ratio-every", "every N iterations, log each term's gradient on the student as a ratio to the "
                                 "detection loss's (metrics.jsonl, plot); 0: at the start only", T, type=int)
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
    add(g, "--nonfinite", "a step whose loss or gradient is NaN or Inf: stop, naming what went first (checked "
                          "every --log-every iterations), or skip the step (checked every step)", T,
        choices=CHOICES["nonfinite"])
    add(g, "--max-skipped-steps", "--nonfinite skip: stop after this many bad steps in a row", T, type=int)
    add(g, "--eval-batch-size", "images per batch in evaluation", T, type=int)
    add(g, "--no-eval", "skip the final evaluation", T, action="store_true")
    add(g, "--tensorboard", "also log to OUTPUT_DIR/tb (needs tensorboard)", T, action="store_true")
    add(g, "--seed", "random seed", T, type=int)
    add_runtime_flags(g, T)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a detector (teacher or student), optionally with distillation",
                              argument_default=S, usage="%(prog)s --train-images DIR --train-ann JSON [options]",
                              description="Train a torchvision detector on COCO-format data. Values come from the "
                                          "defaults shown, then --config, then these flags.")
    add_train_arguments(p)
    p.set_defaults(run=run)


def train_config(values: dict) -> TrainConfig:
    """TrainConfig from the flags given (absent flags stay absent) over the --config file."""
    values = dict(values)
    file_values = read_config_file(values.pop("config")) if "config" in values else {}
    if "model_kwargs_list" in values:
        values["model_kwargs"] = {**file_values.get("model_kwargs", {}), **dict(values.pop("model_kwargs_list"))}
    return make_config(file_values, values)


def print_eval(summary: dict, prefix: str = "") -> None:
    if "eval" in summary:
        print(prefix + json.dumps(summary["eval"], indent=2))


def run(args) -> int:
    cfg = check_train_config(train_config(vars(args)))
    from kdtrain.engine import train

    print_eval(train(cfg))
    return 0
