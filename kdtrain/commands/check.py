"""``python -m kdtrain check``: the distillation check that a distilled ``train`` runs first, alone.

It takes ``train``'s flags, builds the data, the student, the teacher and the recipe's terms exactly as
``train`` would, runs the check on the first training images (kdtrain/distill/check.py) and exits:
0 when the check passed (warnings included), 2 with one line when it stops the run.
"""

from __future__ import annotations

from kdtrain.commands.flags import S
from kdtrain.commands.train import add_train_arguments, train_config
from kdtrain.config import check_train_config


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("check", help="the distillation check alone: is the teacher trained, which levels "
                                            "pair, does each term's gradient suit the detection loss's",
                              argument_default=S, usage="%(prog)s --train-images DIR --train-ann JSON --recipe R "
                                                        "--teacher CKPT [options]",
                              description="Build a distilled training run as train does, print its distillation "
                                          "check (teacher, level pairs, each term's first value and gradient "
                                          "ratio) and exit without training.")
    add_train_arguments(p)
    p.set_defaults(run=run)


def run(args) -> int:
    cfg = check_train_config(train_config(vars(args)))
    from kdtrain.engine import distill_check

    distill_check(cfg)
    return 0
