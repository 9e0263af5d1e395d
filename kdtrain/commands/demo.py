"""``python -m kdtrain demo`` (also what ``python -m kdtrain`` alone runs): the built-in offline demo
(kdtrain/demo/)."""

from __future__ import annotations

from kdtrain.commands.flags import add, add_builtin_data_flags, add_seeds_flag, add_student_flags, config_from
from kdtrain.config import CHOICES, DEMO_OUTPUT_DIRS, DemoConfig


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("demo", help="built-in offline demo (the default when no subcommand is given)",
                              usage="%(prog)s [options]",
                              description="Teacher, student, and the student distilled from the teacher, trained "
                                          "and evaluated on a generated shapes dataset on CPU.")
    D = DemoConfig
    add(p, "--variant", "standard: student without vs with distillation; label-scarce: only --labeled-fraction "
                        "of the training labels, two-step pseudo-label distillation vs supervised on that part", D,
        choices=CHOICES["variant"])
    add(p, "--output-dir", "students, results json and plot; unset: "
        + ", ".join(f"{folder} ({variant})" for variant, folder in DEMO_OUTPUT_DIRS.items()), default=None,
        metavar="DIR")
    add(p, "--recipe", "distillation recipe of the distilled student", D)
    add(p, "--distill-weights", "as in train", D)
    add(p, "--student-iterations", "training iterations of each student (one budget for all)", D, type=int)
    add_seeds_flag(p, D, "the table averages them, the plot shows each")
    g = p.add_argument_group("label-scarce variant")
    add(g, "--labeled-fraction", "fraction of training images that keep their labels", D, type=float)
    add(g, "--step1-share", "share of the student budget the two-step student spends on pseudo-labels", D,
        type=float)
    add(g, "--pseudo-score-threshold", "teacher score threshold for pseudo-labels", D, type=float)
    g = p.add_argument_group("students")
    add_student_flags(g, D)
    g = p.add_argument_group("built-in data and teacher")
    add(g, "--train-images", "number of generated training images", D, type=int)
    add(g, "--val-images", "number of generated validation images", D, type=int)
    add(g, "--retrain-teacher", "ignore the cached teacher", D, action="store_true")
    add_builtin_data_flags(g, D)
    p.set_defaults(run=run)


def run(args) -> int:
    from kdtrain.demo import run_demo

    run_demo(config_from(DemoConfig, args))
    return 0
