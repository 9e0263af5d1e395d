"""``python -m kdtrain efficacy`` (alias ``benchmark``): the efficacy table, recipes x seeds at one budget
(kdtrain/efficacy.py). Not the kernel-speed benchmarks of benchmarks/."""

from __future__ import annotations

from kdtrain.commands.flags import (add, add_builtin_data_flags, add_seeds_flag, add_student_flags, config_from,
                                    int_list)
from kdtrain.config import DemoConfig, EfficacyConfig, check_efficacy_config


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "efficacy", aliases=["benchmark"],
        help="efficacy table: recipes x seeds at one budget, gains over no distillation",
        usage="%(prog)s [--recipes RECIPE[:WEIGHTS] ...] [--seeds N,...] [options]",
        description="Trains the same student with each recipe and seed at an equal budget from one shared teacher "
                    "and tabulates mean ± std of mAP, AP50, APs, the paired per-seed gain over the undistilled "
                    "student, wall time and distillation cost per step (OUTPUT_DIR/efficacy_results.json, .md, "
                    ".png). Started again with the same settings, it skips the runs that finished. Default data and "
                    "teacher: the demo's.")
    E = EfficacyConfig
    add(p, "--recipes", "rows, each RECIPE or RECIPE:WEIGHTS (WEIGHTS as --distill-weights of train, e.g. fgd:auto "
                        "or chen2017:chen_rcn=auto); none is the baseline of the gains", E, nargs="+",
        metavar="RECIPE[:WEIGHTS]")
    add_seeds_flag(p, E, "every recipe runs each")
    add(p, "--iterations", "training iterations of every student", E, type=int)
    add(p, "--output-dir", "run folders, results json, markdown table and plot", E, metavar="DIR")
    g = p.add_argument_group("own data", "all five, or none for the demo's generated data and cached teacher")
    add(g, "--train-images", "training image folder", E, metavar="DIR")
    add(g, "--train-ann", "COCO instances json of the training images", E, metavar="JSON")
    add(g, "--val-images", "validation image folder", E, metavar="DIR")
    add(g, "--val-ann", "COCO instances json of the validation images", E, metavar="JSON")
    add(g, "--teacher", "teacher shared by every run (a kdtrain checkpoint)", E, metavar="CKPT")
    g = p.add_argument_group("students (the demo's: " + DemoConfig.student_arch + ")")
    add_student_flags(g, E)
    add(g, "--student-anchors", "anchor size per FPN level", E, type=int_list, metavar="N,N,N,N")
    add(g, "--lr", "peak learning rate", E, type=float)
    add(g, "--distill-auto-ratio", "as in train (rows with auto weights)", E, type=float)
    add(g, "--distill-auto-iters", "as in train (rows with auto weights)", E, type=int)
    add(g, "--keep-models", "keep each run's model_final.pth (else deleted once evaluated and timed)", E,
        action="store_true")
    g = p.add_argument_group("built-in data and teacher (as the demo's; its cached teacher is reused when these "
                             "match)")
    add(g, "--generated-train-images", "number of generated training images", E, type=int)
    add(g, "--generated-val-images", "number of generated validation images", E, type=int)
    add_builtin_data_flags(g, E)
    p.set_defaults(run=run)


def run(args) -> int:
    config = config_from(EfficacyConfig, args)
    check_efficacy_config(config)
    from kdtrain.efficacy import failed_runs, run_efficacy

    return 1 if failed_runs(config, run_efficacy(config)["runs"]) else 0  # failed runs: listed under the table
