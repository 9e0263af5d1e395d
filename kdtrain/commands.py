"""What each subcommand does with its parsed flags.

The paths the user gave are checked first and torch/torchvision load only after that, inside
these functions: a wrong path fails in a second, and ``--help`` (kdtrain/cli.py) never loads them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

from kdtrain.config import BenchmarkConfig, DemoConfig, PseudoLabelConfig, TwoStepConfig, check_benchmark_config, \
    check_train_config, make_config, read_config_file
from kdtrain.errors import require_dir, require_file

TWO_STEP_KEYS = ("steps", "unlabeled_images", "pseudo_ann", "class_maps", "pseudo_score_threshold",
                 "pseudo_nms_iou", "pseudo_max_detections", "step1_iterations", "step2_iterations", "step2_lr",
                 "step1_init")


def train_config(values: dict):
    """TrainConfig from the flags given (absent flags stay absent) over the --config file."""
    values = dict(values)
    file_values = read_config_file(values.pop("config")) if "config" in values else {}
    if "model_kwargs_list" in values:
        values["model_kwargs"] = {**file_values.get("model_kwargs", {}), **dict(values.pop("model_kwargs_list"))}
    return make_config(file_values, values)


def _print_eval(summary: dict, prefix: str = "") -> None:
    if "eval" in summary:
        print(prefix + json.dumps(summary["eval"], indent=2))


def run_train(args) -> int:
    cfg = check_train_config(train_config(vars(args)))
    from kdtrain.engine import train

    _print_eval(train(cfg))
    return 0


def run_two_step(args) -> int:
    values = vars(args).copy()
    own = {k: values.pop(k) for k in TWO_STEP_KEYS if k in values}
    base = check_train_config(train_config(values), need_data=False)  # each step checks its own data
    if own.get("pseudo_ann"):
        require_file(own["pseudo_ann"], "--pseudo-ann")
    if own.get("unlabeled_images"):
        require_dir(own["unlabeled_images"], "--unlabeled-images")
    for path in own.get("class_maps") or []:
        require_file(path, "--class-map")
    from kdtrain.two_step import run_two_step as run

    for step, summary in run(TwoStepConfig(base=base, **own)).items():
        _print_eval(summary, f"{step} ")
    return 0


def _device(name: str):
    import torch

    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def run_eval(args) -> int:
    require_file(args.checkpoint, "--checkpoint")
    require_dir(args.images, "--images")
    require_file(args.ann, "--ann")
    from kdtrain.data.coco import CocoDetection
    from kdtrain.data.image_check import check_images
    from kdtrain.distributed import DistInfo
    from kdtrain.evaluate import evaluate
    from kdtrain.label_map import checkpoint_label_map
    from kdtrain.models import load_detector
    from kdtrain.runtime import set_threads

    set_threads(args.threads)
    model, _, ckpt = load_detector(args.checkpoint)
    model.to(_device(args.device))
    dataset = CocoDetection(args.images, args.ann, category_ids_as_labels=args.category_ids_as_labels)
    check_images([dataset.image_path(i) for i in range(len(dataset))], args.progress)
    label_to_cat_id = checkpoint_label_map(ckpt, args.checkpoint, dataset, warn=lambda m: print(m, file=sys.stderr))
    metrics = evaluate(model, dataset, DistInfo(device=_device(args.device)), args.batch_size, args.workers,
                       args.progress, label_to_cat_id=label_to_cat_id)
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    return 0


def run_predict(args) -> int:
    require_file(args.checkpoint, "--checkpoint")
    require_dir(args.images, "--images")
    if args.ann:
        require_file(args.ann, "--ann")
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


def run_pseudo_label(args) -> int:
    for path in args.teachers:
        require_file(path, "--teacher")
    require_dir(args.images, "--images")
    for path in args.class_maps:
        require_file(path, "--class-map")
    if args.categories_from:
        require_file(args.categories_from, "--categories-from")
    from kdtrain.distributed import cleanup, init_distributed
    from kdtrain.pseudo.labeler import pseudo_label
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


def run_demo(args) -> int:
    from kdtrain.demo import run_demo as run

    # Every DemoConfig field the demo parser has a flag for (kdtrain/cli.py); the others keep their default.
    run(DemoConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DemoConfig) if hasattr(args, f.name)}))
    return 0


def run_benchmark(args) -> int:
    b = BenchmarkConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(BenchmarkConfig)})
    check_benchmark_config(b)
    from kdtrain.benchmark import run_benchmark as run

    run(b)
    return 0


def _fields_of(config, args) -> dict:
    """The flags of ``args`` that are fields of the dataclass ``config``."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(config) if hasattr(args, f.name)}


def run_visualize(args) -> int:
    from kdtrain.config import VisualizeConfig

    cfg = VisualizeConfig(**_fields_of(VisualizeConfig, args)).check()
    from kdtrain.runtime import set_threads
    from kdtrain.visualize import visualize

    set_threads(cfg.threads)
    visualize(cfg, _device(cfg.device))
    return 0


def run_plot(args) -> int:
    from kdtrain.config import PlotConfig
    from kdtrain.plot_run import plot_run

    path, _lines = plot_run(PlotConfig(**_fields_of(PlotConfig, args)))
    print(f"loss curves written to {path}")
    return 0
