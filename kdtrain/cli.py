"""Command line: ``python -m kdtrain [train|eval|predict|pseudo-label|two-step|demo] ...`` (no arguments: the demo)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from kdtrain.distill.recipes import DEFAULT_WEIGHTS, RECIPES
from kdtrain.models import ARCHITECTURES

S = argparse.SUPPRESS  # train flags not given stay absent, so config-file values survive


def _kv(text: str) -> tuple:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        value = json.loads(value)
    except json.JSONDecodeError:
        pass  # plain string
    return key, value


def _add_train_parser(sub):
    p = sub.add_parser("train", help="train a detector (teacher or student), optionally with distillation",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter, argument_default=S,
                       description="Train a torchvision detector on COCO-format data. Values come from the "
                                   "built-in defaults, then --config, then these flags.")
    _add_train_arguments(p)
    return p


def _add_train_arguments(p):
    p.add_argument("--config", help="YAML or TOML file of options (same names as the flags, dashes or underscores)")
    g = p.add_argument_group("data")
    g.add_argument("--train-images", help="folder of training images")
    g.add_argument("--train-ann", help="COCO instances json of the training images")
    g.add_argument("--val-images", help="folder of validation images (evaluated at the end)")
    g.add_argument("--val-ann", help="COCO instances json of the validation images")
    g.add_argument("--invalid-boxes", choices=("error", "skip"), help="degenerate boxes (w or h <= 0): stop (default) or drop them")
    g.add_argument("--category-ids-as-labels", action="store_true",
                   help="use COCO category ids as labels (torchvision's COCO-pretrained 91-class models) instead of 1..K")
    g.add_argument("--hflip", type=float, help="horizontal flip probability (default 0.5)")
    g.add_argument("--aspect-ratio-group-factor", type=int, help="aspect-ratio grouping bins (-1 off; default 3)")
    g.add_argument("--workers", type=int, help="data loading worker processes (default 2)")
    g.add_argument("--labeled-fraction", type=float,
                   help="train on this fraction of the training images only (label-scarce runs; default 1)")
    g.add_argument("--labeled-subset-seed", type=int,
                   help="seed choosing the labeled fraction, apart from --seed so runs share a subset (default 0)")
    g = p.add_argument_group("student model")
    g.add_argument("--arch", choices=ARCHITECTURES, help="detector (default fasterrcnn_mobilenet_v3_large_320_fpn)")
    g.add_argument("--num-classes", type=int, help="classes including background (default: from the dataset)")
    g.add_argument("--weights", help="torchvision detector weights, e.g. DEFAULT (downloads; classifier replaced if classes differ)")
    g.add_argument("--weights-backbone", help="torchvision backbone weights, e.g. DEFAULT (downloads)")
    g.add_argument("--init", help="start from the weights of a kdtrain checkpoint")
    g.add_argument("--min-size", type=int, help="shorter image side after resize (default: the architecture's)")
    g.add_argument("--max-size", type=int, help="longer image side cap after resize")
    g.add_argument("--model-arg", dest="model_kwargs_list", action="append", type=_kv, metavar="KEY=VALUE",
                   help="extra torchvision constructor argument, e.g. box_batch_size_per_image=128 (repeatable)")
    g = p.add_argument_group("teacher and distillation")
    g.add_argument("--teacher", help="teacher: a kdtrain checkpoint (model_final.pth)")
    g.add_argument("--teacher-arch", choices=ARCHITECTURES, help="teacher built from torchvision instead of --teacher")
    g.add_argument("--teacher-weights", help="torchvision weights for --teacher-arch, e.g. DEFAULT (downloads)")
    g.add_argument("--recipe", help=f"distillation recipe(s), comma-combinable: {', '.join(RECIPES)} (default none)")
    g.add_argument("--distill-weights", metavar="TERM=W,...",
                   help="weights of the distillation losses; defaults: "
                        + ", ".join(f"{k}={v:g}" for k, v in DEFAULT_WEIGHTS.items()))
    g.add_argument("--distill-warmup", type=int, help="iterations over which distillation weights ramp from 0 (default 0)")
    g.add_argument("--imitation-mask", choices=("none", "boxes"), help="imitation on the whole map or inside the boxes only")
    g.add_argument("--student-scale", type=float,
                   help="low-resolution student (Chen 2017): its input is the teacher's size times this (e.g. 0.5); "
                        "the teacher sees full resolution through its own transform (default 1)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--iterations", type=int, help="training iterations (default 1000 unless --epochs)")
    g.add_argument("--epochs", type=float, help="training length in epochs (instead of --iterations)")
    g.add_argument("--batch-size", type=int, help="images per process per iteration (default 2)")
    g.add_argument("--optimizer", choices=("sgd", "adamw"), help="default sgd (momentum 0.9)")
    g.add_argument("--lr", type=float, help="peak learning rate (default 0.02)")
    g.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    g.add_argument("--weight-decay", type=float, help="default 1e-4")
    g.add_argument("--lr-schedule", choices=("constant", "step", "cosine"), help="after warm-up (default cosine)")
    g.add_argument("--lr-warmup", type=int, help="linear warm-up iterations (default 100)")
    g.add_argument("--lr-steps", type=int, nargs="+", help="iterations where the step schedule multiplies lr by --lr-gamma")
    g.add_argument("--lr-gamma", type=float, help="step schedule factor (default 0.1)")
    g.add_argument("--clip-grad", type=float, help="gradient-norm clipping, 0 off (default 10)")
    g.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"), help="mixed precision on GPU (auto: bf16 if supported); never on CPU")
    g = p.add_argument_group("run")
    g.add_argument("--output-dir", help="checkpoints, metrics.jsonl, eval.json, model_final.pth (default runs/kdtrain)")
    g.add_argument("--resume", nargs="?", const="auto", help="continue a stopped run: from PATH, or from OUTPUT_DIR/checkpoint_last.pth when no path is given")
    g.add_argument("--checkpoint-every", type=int, help="iterations between atomic checkpoints (default 500)")
    g.add_argument("--log-every", type=int, help="iterations between metrics.jsonl records (default 20)")
    g.add_argument("--eval-batch-size", type=int, help="images per batch in evaluation (default 4)")
    g.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    g.add_argument("--tensorboard", action="store_true", help="also log to OUTPUT_DIR/tb (needs tensorboard)")
    g.add_argument("--seed", type=int, help="random seed (default 0)")
    g.add_argument("--threads", type=int, help="CPU threads per process (default: all cores / local processes)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default auto (cuda when visible)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def _add_pseudo_label_parser(sub):
    p = sub.add_parser("pseudo-label", help="teachers label an image folder: COCO json of pseudo-labels",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="One or more teachers predict on unlabeled images; their boxes are merged "
                                   "(union) in the student's label space and written as a COCO instances json. "
                                   "Under torchrun each rank labels a shard and rank 0 writes.")
    p.add_argument("--teacher", dest="teachers", action="append", required=True, metavar="CKPT",
                   help="kdtrain teacher checkpoint (repeat for several teachers)")
    p.add_argument("--images", required=True, help="folder of images to label")
    p.add_argument("--output", required=True, help="COCO json to write")
    p.add_argument("--class-map", dest="class_maps", action="append", default=[], metavar="FILE",
                   help="JSON/YAML {teacher class name or id: student class name or null}: once for all "
                        "teachers or once per teacher in --teacher order; unnamed classes are dropped")
    p.add_argument("--categories-from", metavar="COCO_JSON",
                   help="the student's categories (ids and names) from this json; default: the mapped names, ids 1..K")
    p.add_argument("--score-threshold", type=float, default=0.5, help="keep teacher boxes scoring at least this")
    p.add_argument("--nms-iou", type=float, default=0.5, help="class-wise NMS IoU of each teacher's boxes")
    p.add_argument("--max-detections", type=int, default=100, help="per teacher and image")
    p.add_argument("--merge-nms-iou", type=float, default=None,
                   help="NMS over the merged teachers' boxes (default off: the paper found it does not help)")
    p.add_argument("--keep-empty", action="store_true",
                   help="keep images without any box (as background); default drops them, as the paper does")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=2, help="image loading worker processes")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per process (default all cores / processes)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def _add_two_step_parser(sub):
    p = sub.add_parser("two-step", help="pseudo-label distillation then fine-tuning (Banitalebi 2021)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter, argument_default=S,
                       description="Step 1 trains the student on the teacher's pseudo-labels of --unlabeled-images "
                                   "with feature imitation masked by the teacher's boxes; step 2 fine-tunes it on "
                                   "--train-images/--train-ann (optionally --labeled-fraction). Outputs go to "
                                   "OUTPUT_DIR/step1 and OUTPUT_DIR/step2. All train flags apply to both steps.")
    g = p.add_argument_group("two-step")
    g.add_argument("--steps", help="steps to run: 1, 2 or 1,2 (default 1,2)")
    g.add_argument("--unlabeled-images", help="step-1 image folder (default: --train-images)")
    g.add_argument("--pseudo-ann", help="existing pseudo-labels json (from pseudo-label); else --teacher writes "
                                        "OUTPUT_DIR/pseudo_labels.json")
    g.add_argument("--class-map", dest="class_maps", action="append", metavar="FILE", help="as in pseudo-label")
    g.add_argument("--pseudo-score-threshold", type=float, help="teacher score threshold (default 0.5)")
    g.add_argument("--pseudo-nms-iou", type=float, help="teacher NMS IoU (default 0.5)")
    g.add_argument("--pseudo-max-detections", type=int, help="per image (default 100)")
    g.add_argument("--step1-iterations", type=int, help="default --iterations")
    g.add_argument("--step2-iterations", type=int, help="default --iterations")
    g.add_argument("--step2-lr", type=float, help="fine-tuning learning rate (default --lr)")
    g.add_argument("--step1-init", help="step 2 alone: the step-1 student (default OUTPUT_DIR/step1/model_final.pth)")
    _add_train_arguments(p)
    return p


def _add_eval_parser(sub):
    p = sub.add_parser("eval", help="COCO metrics of a checkpoint on a dataset",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="kdtrain checkpoint (model_final.pth or checkpoint_last.pth)")
    p.add_argument("--images", required=True, help="image folder")
    p.add_argument("--ann", required=True, help="COCO instances json")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--category-ids-as-labels", action="store_true", help="as in train")
    p.add_argument("--output", help="write the metrics json here")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default all cores)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def _add_predict_parser(sub):
    p = sub.add_parser("predict", help="detections for an image folder, as COCO results json",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="kdtrain checkpoint")
    p.add_argument("--images", required=True, help="image folder")
    p.add_argument("--output", required=True, help="results json to write")
    p.add_argument("--ann", help="COCO json whose image ids to use (matched by file name); default 1..N in name order")
    p.add_argument("--score-threshold", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default all cores)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def _add_demo_parser(sub):
    from kdtrain.demo import DemoConfig

    d = DemoConfig()
    p = sub.add_parser("demo", help="built-in offline demo (the default when no subcommand is given)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--variant", choices=("standard", "label-scarce"), default=d.variant,
                   help="standard: student without vs with distillation; label-scarce: only --labeled-fraction "
                        "of the training labels, two-step pseudo-label distillation vs supervised on that part")
    p.add_argument("--output-dir", default=None,
                   help="students, results json and plot (default kdtrain_demo, or kdtrain_demo_label_scarce)")
    p.add_argument("--cache-dir", default=d.cache_dir, help="generated dataset and cached teacher")
    p.add_argument("--recipe", default=d.recipe, help="distillation recipe of the distilled student")
    p.add_argument("--distill-weights", default=d.distill_weights, help="as in train")
    p.add_argument("--distill-warmup", type=int, default=d.distill_warmup)
    p.add_argument("--imitation-mask", choices=("none", "boxes"), default=d.imitation_mask)
    p.add_argument("--labeled-fraction", type=float, default=d.labeled_fraction,
                   help="label-scarce: fraction of training images that keep their labels")
    p.add_argument("--step1-share", type=float, default=d.step1_share,
                   help="label-scarce: share of the student budget the two-step student spends on pseudo-labels")
    p.add_argument("--pseudo-score-threshold", type=float, default=d.pseudo_score_threshold,
                   help="label-scarce: teacher score threshold for pseudo-labels")
    p.add_argument("--teacher-iterations", type=int, default=d.teacher_iterations)
    p.add_argument("--student-iterations", type=int, default=d.student_iterations)
    p.add_argument("--seeds", default=",".join(map(str, d.seeds)), help="comma-separated student seeds (results averaged)")
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument("--train-images", type=int, default=d.train_images, help="number of generated training images")
    p.add_argument("--val-images", type=int, default=d.val_images, help="number of generated validation images")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default all cores)")
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--retrain-teacher", action="store_true", help="ignore the cached teacher")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kdtrain",
        description="Knowledge-distillation trainer for torchvision detectors (losses from kdops). "
                    "With no subcommand it runs the built-in offline demo.")
    sub = parser.add_subparsers(dest="command")
    _add_train_parser(sub)
    _add_eval_parser(sub)
    _add_predict_parser(sub)
    _add_pseudo_label_parser(sub)
    _add_two_step_parser(sub)
    _add_demo_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv or ["demo"])
    if args.command == "train":
        return _cmd_train(args)
    if args.command == "eval":
        return _cmd_eval(args)
    if args.command == "predict":
        return _cmd_predict(args)
    if args.command == "pseudo-label":
        return _cmd_pseudo_label(args)
    if args.command == "two-step":
        return _cmd_two_step(args)
    return _cmd_demo(args)


def _train_config(values: dict):
    from kdtrain.config import make_config, read_config_file

    values = dict(values)
    file_values = read_config_file(values.pop("config")) if "config" in values else {}
    if "model_kwargs_list" in values:
        values["model_kwargs"] = {**file_values.get("model_kwargs", {}), **dict(values.pop("model_kwargs_list"))}
    return make_config(file_values, values)


def _cmd_train(args) -> int:
    from kdtrain.engine import train

    summary = train(_train_config(vars(args)))
    if "eval" in summary:
        print(json.dumps(summary["eval"], indent=2))
    return 0


def _cmd_pseudo_label(args) -> int:
    from kdtrain.distributed import cleanup, init_distributed
    from kdtrain.pseudo.labeler import PseudoLabelConfig, pseudo_label
    from kdtrain.runtime import set_threads

    info = init_distributed(args.device)
    try:
        set_threads(args.threads, int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size)))
        cfg = PseudoLabelConfig(
            teachers=args.teachers, images=args.images, output=args.output, class_maps=args.class_maps,
            categories_from=args.categories_from, score_threshold=args.score_threshold, nms_iou=args.nms_iou,
            max_detections=args.max_detections, merge_nms_iou=args.merge_nms_iou, keep_empty=args.keep_empty,
            batch_size=args.batch_size, workers=args.workers, progress=args.progress)
        pseudo_label(cfg, info)
    finally:
        cleanup(info)
    return 0


TWO_STEP_KEYS = ("steps", "unlabeled_images", "pseudo_ann", "class_maps", "pseudo_score_threshold",
                 "pseudo_nms_iou", "pseudo_max_detections", "step1_iterations", "step2_iterations", "step2_lr",
                 "step1_init")


def _cmd_two_step(args) -> int:
    from kdtrain.two_step import TwoStepConfig, run_two_step

    values = vars(args).copy()
    own = {k: values.pop(k) for k in TWO_STEP_KEYS if k in values}
    if "steps" in own:
        own["steps"] = tuple(int(x) for x in str(own["steps"]).split(",") if x.strip())
        if not own["steps"] or not set(own["steps"]) <= {1, 2}:
            raise SystemExit("--steps must be 1, 2 or 1,2")
    summaries = run_two_step(TwoStepConfig(base=_train_config(values), **own))
    for step, summary in summaries.items():
        if "eval" in summary:
            print(step, json.dumps(summary["eval"], indent=2))
    return 0


def _device(name: str):
    import torch

    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def _cmd_eval(args) -> int:
    from kdtrain.data.coco import CocoDetection
    from kdtrain.distributed import DistInfo
    from kdtrain.evaluate import evaluate
    from kdtrain.models import load_detector
    from kdtrain.runtime import set_threads

    set_threads(args.threads)
    model, _, _ = load_detector(args.checkpoint)
    model.to(_device(args.device))
    dataset = CocoDetection(args.images, args.ann, category_ids_as_labels=args.category_ids_as_labels)
    metrics = evaluate(model, dataset, DistInfo(device=_device(args.device)), args.batch_size, args.workers, args.progress)
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    return 0


def _cmd_predict(args) -> int:
    from kdtrain.data.coco import load_coco_json
    from kdtrain.models import load_detector
    from kdtrain.predict import predict_folder, write_results
    from kdtrain.runtime import set_threads

    set_threads(args.threads)
    model, spec, ckpt = load_detector(args.checkpoint)
    model.to(_device(args.device))
    label_to_cat_id = ckpt.get("label_to_cat_id") or {i: i for i in range(1, spec.num_classes)}
    image_ids = None
    if args.ann:
        image_ids = {img["file_name"]: img["id"] for img in load_coco_json(args.ann)["images"]}
    results = predict_folder(model, args.images, label_to_cat_id, image_ids, args.batch_size,
                             args.score_threshold, args.progress)
    write_results(results, args.output)
    print(f"{len(results)} detections written to {args.output}")
    return 0


def _cmd_demo(args) -> int:
    from kdtrain.demo import DemoConfig, run_demo

    label_scarce = args.variant == "label-scarce"
    output_dir = args.output_dir or ("kdtrain_demo_label_scarce" if label_scarce else "kdtrain_demo")
    d = DemoConfig(output_dir=output_dir, variant=args.variant, labeled_fraction=args.labeled_fraction,
                   step1_share=args.step1_share, pseudo_score_threshold=args.pseudo_score_threshold,
                   cache_dir=args.cache_dir, recipe=args.recipe,
                   distill_weights=args.distill_weights, distill_warmup=args.distill_warmup,
                   imitation_mask=args.imitation_mask, teacher_iterations=args.teacher_iterations,
                   student_iterations=args.student_iterations,
                   seeds=tuple(int(s) for s in str(args.seeds).split(",") if s.strip()),
                   image_size=args.image_size, train_images=args.train_images, val_images=args.val_images,
                   batch_size=args.batch_size, threads=args.threads, workers=args.workers,
                   retrain_teacher=args.retrain_teacher, progress=args.progress)
    run_demo(d)
    return 0
