"""What the subcommands' parsers share: ``add`` (help that shows the config dataclass's default), the
argument types, and the flag groups several commands declare (runtime, checkpoint inference, the demo's
and the efficacy table's built-in data and students).

No torch here: every parser is built for ``--help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from kdtrain.architectures import ARCHITECTURES
from kdtrain.config import CACHE_DIR_ENV, CHOICES, TrainConfig, check_range

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


def config_from(config, args):
    """``config`` (a dataclass) built from the flags of ``args`` that are its fields; the others keep their
    defaults."""
    return config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config) if hasattr(args, f.name)})


def check_flags(args, **rules) -> None:
    """UsageError naming the flag whose value breaks its rule: ``rules`` maps a dest of ``args`` to its
    config.RANGES key, e.g. check_flags(args, batch_size="eval_batch_size", threads="threads")."""
    for dest, rule in rules.items():
        check_range(rule, getattr(args, dest, None), "--" + dest.replace("_", "-"))


# ---- argument types ---------------------------------------------------------------------------------------
def key_value(text: str) -> tuple:
    """KEY=VALUE, the value read as JSON where it parses (numbers, lists, booleans) and as a string otherwise."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        value = json.loads(value)
    except json.JSONDecodeError:
        pass  # plain string
    return key, value


def int_list(text: str) -> tuple:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


# ---- flag groups ------------------------------------------------------------------------------------------
def add_runtime_flags(g, config, device: bool = True) -> None:
    """--threads, --device, --no-progress: the same in every subcommand."""
    add(g, "--threads", "CPU threads per process; unset: all cores, split between the processes of a machine",
        config, type=int)
    if device:
        add(g, "--device", "where to run; auto: cuda when a GPU is visible", config, choices=CHOICES["device"])
    add(g, "--no-progress", "no progress bars", config, dest="progress", action="store_false")


def add_checkpoint_flags(p, checkpoint_help: str) -> None:
    """--checkpoint and --images, required: a kdtrain checkpoint run on an image folder (eval, predict)."""
    add(p, "--checkpoint", checkpoint_help, required=True, metavar="CKPT")
    add(p, "--images", "image folder", required=True, metavar="DIR")


def add_inference_batch_flag(p) -> None:
    add(p, "--batch-size", "images per batch", TrainConfig, field="eval_batch_size", type=int)


def add_seeds_flag(g, config, help: str) -> None:
    add(g, "--seeds", f"comma-separated student seeds: {help}", config, type=int_list, metavar="N[,N...]")


def add_student_flags(g, config) -> None:
    """The students' input size, batch and distillation options: the demo's and the efficacy table's."""
    add(g, "--image-size", "the teacher's input size (min and max side); with the built-in data also the "
                           "generated images' side", config, type=int)
    add(g, "--student-scale", "the students' input side as a fraction of --image-size (Chen 2017's low-resolution "
                              "student; 1: the teacher's input)", config, type=float)
    add(g, "--batch-size", "images per training iteration", config, type=int)
    add(g, "--distill-warmup", "as in train", config, type=int)
    add(g, "--imitation-mask", "as in train", config, choices=CHOICES["imitation_mask"])
    add(g, "--trust-teacher", "as in train", config, action="store_true")


def add_builtin_data_flags(g, config) -> None:
    """Where the built-in data and teacher are cached and how the teacher is trained, data loading, runtime."""
    add(g, "--cache-dir", f"generated dataset and cached teacher, kept between runs ({CACHE_DIR_ENV} in the "
                          "environment sets it)", config, metavar="DIR")
    add(g, "--teacher-iterations", "iterations of the built-in teacher (trained once, then reused from the cache)",
        config, type=int)
    add(g, "--pretrain-steps", "steps of the teacher's and the student's backbone pretraining on generated "
                               "crops, the offline stand-in for ImageNet weights (done once, then cached); 0: "
                               "backbones from random initialisation", config, type=int)
    add(g, "--workers", "data loading worker processes", config, type=int)
    add_runtime_flags(g, config, device=False)
