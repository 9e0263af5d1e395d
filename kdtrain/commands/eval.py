"""``python -m kdtrain eval``: COCO box metrics of a checkpoint on a dataset, scored with the checkpoint's
label map."""

from __future__ import annotations

import json
import sys

from kdtrain.commands.flags import add, add_checkpoint_flags, add_inference_batch_flag, add_runtime_flags, check_flags
from kdtrain.config import TrainConfig
from kdtrain.data.coco_json import DatasetError
from kdtrain.errors import require_dir, require_file, require_writable_file


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("eval", help="COCO metrics of a checkpoint on a dataset",
                              usage="%(prog)s --checkpoint CKPT --images DIR --ann JSON [options]",
                              description="COCO box metrics (mAP, AP50, AP75, APs, APm, APl) of a kdtrain checkpoint "
                                          "on a COCO-format dataset, printed as json; a size group without objects is "
                                          "null.")
    add_checkpoint_flags(p, "kdtrain checkpoint (model_final.pth or checkpoint_last.pth)")
    add(p, "--ann", "COCO instances json", required=True, metavar="JSON")
    add_inference_batch_flag(p)
    add(p, "--workers", "image loading worker processes", TrainConfig, type=int)
    add(p, "--category-ids-as-labels", "as in train; only for a checkpoint without a label map (kdtrain's have "
                                       "one and it is used)", TrainConfig, action="store_true")
    add(p, "--output", "also write the metrics json here", metavar="JSON")
    add_runtime_flags(p, TrainConfig)
    p.set_defaults(run=run)


def _describe(categories) -> str:
    return ", ".join(f"{c['id']}:{c['name']}" for c in categories)


def checkpoint_label_map(ckpt: dict, ckpt_path: str, dataset, warn=print) -> dict:
    """{label: category id} of the checkpoint; every category of ``dataset`` must be one of its (same id and name).

    The model's labels mean the categories of the json it was trained on; numbering them from another
    json's categories would score one class as another without a word.
    """
    label_to_cat_id = ckpt.get("label_to_cat_id")
    if label_to_cat_id is None:  # not written by kdtrain: nothing to check against
        warn(f"[kdtrain] warning: {ckpt_path} holds no label map; labels are mapped with the categories of "
             f"{dataset.ann_file}, which is right only if the model was trained on exactly those")
        return dataset.label_to_cat_id
    label_to_cat_id = {int(k): int(v) for k, v in label_to_cat_id.items()}
    known = {c["id"]: c["name"] for c in ckpt.get("categories") or ()}
    known = known or {v: None for v in label_to_cat_id.values()}  # ids only: names cannot be compared
    unmapped = [c for c in dataset.categories
                if c["id"] not in known or known[c["id"]] not in (None, c["name"])]
    if unmapped:
        theirs = _describe({"id": k, "name": v} for k, v in sorted(known.items()))
        raise DatasetError(f"{dataset.ann_file}: categories {_describe(unmapped)} are not among the checkpoint's "
                           f"({theirs}, from {ckpt_path}); evaluate on a json with the categories (ids and names) "
                           "the model was trained on")
    return label_to_cat_id


def run(args) -> int:
    require_file(args.checkpoint, "--checkpoint")
    require_dir(args.images, "--images")
    require_file(args.ann, "--ann")
    check_flags(args, batch_size="eval_batch_size", workers="workers", threads="threads")
    if args.output:
        require_writable_file(args.output, "--output")
    from kdtrain.data.coco import CocoDetection
    from kdtrain.data.image_check import check_images
    from kdtrain.distributed import DistInfo
    from kdtrain.evaluate import evaluate
    from kdtrain.models import load_detector
    from kdtrain.runtime import resolve_device, set_threads

    set_threads(args.threads)
    device = resolve_device(args.device)
    model, _, ckpt = load_detector(args.checkpoint)
    model.to(device)
    dataset = CocoDetection(args.images, args.ann, category_ids_as_labels=args.category_ids_as_labels, scoring=True)
    check_images([dataset.image_path(i) for i in range(len(dataset))], args.progress)
    label_to_cat_id = checkpoint_label_map(ckpt, args.checkpoint, dataset, warn=lambda m: print(m, file=sys.stderr))
    metrics = evaluate(model, dataset, DistInfo(device=device), args.batch_size, args.workers, args.progress,
                       label_to_cat_id=label_to_cat_id)
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    return 0
