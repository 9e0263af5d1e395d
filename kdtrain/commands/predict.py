"""``python -m kdtrain predict``: a checkpoint's detections for an image folder, as a COCO results json."""

from __future__ import annotations

from kdtrain.commands.flags import add, add_checkpoint_flags, add_inference_batch_flag, add_runtime_flags, check_flags
from kdtrain.config import TrainConfig
from kdtrain.errors import require_dir, require_file, require_writable_file


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("predict", help="detections for an image folder, as COCO results json",
                              usage="%(prog)s --checkpoint CKPT --images DIR --output JSON [options]",
                              description="Run a kdtrain checkpoint on every image of a folder and write the "
                                          "detections as a COCO results json.")
    add_checkpoint_flags(p, "kdtrain checkpoint")
    add(p, "--output", "results json to write", required=True, metavar="JSON")
    add(p, "--ann", "COCO json whose image ids to use (matched by file name); unset: 1..N in name order",
        metavar="JSON")
    add(p, "--score-threshold", "keep detections scoring at least this", type=float, default=0.05)
    add_inference_batch_flag(p)
    add_runtime_flags(p, TrainConfig)
    p.set_defaults(run=run)


def run(args) -> int:
    require_file(args.checkpoint, "--checkpoint")
    require_dir(args.images, "--images")
    if args.ann:
        require_file(args.ann, "--ann")
    check_flags(args, batch_size="eval_batch_size", threads="threads", score_threshold="score_threshold")
    require_writable_file(args.output, "--output")
    from kdtrain.data.coco import load_coco_json
    from kdtrain.models import load_detector
    from kdtrain.predict import predict_folder, write_results
    from kdtrain.runtime import resolve_device, set_threads

    set_threads(args.threads)
    model, spec, ckpt = load_detector(args.checkpoint)
    model.to(resolve_device(args.device))
    label_to_cat_id = ckpt.get("label_to_cat_id") or {i: i for i in range(1, spec.num_classes)}
    image_ids = None
    if args.ann:
        image_ids = {img["file_name"]: img["id"] for img in load_coco_json(args.ann)["images"]}
    results = predict_folder(model, args.images, label_to_cat_id, image_ids, args.batch_size,
                             args.score_threshold, args.progress)
    write_results(results, args.output)
    print(f"{len(results)} detections written to {args.output}")
    return 0
