"""A checkpoint's label -> category id map, checked against the dataset it is evaluated on.

The model's labels mean the categories of the json it was trained on; numbering them from another
json's categories would score one class as another without a word.
"""

from __future__ import annotations

from kdtrain.data.coco_json import DatasetError


def _describe(categories) -> str:
    return ", ".join(f"{c['id']}:{c['name']}" for c in categories)


def checkpoint_label_map(ckpt: dict, ckpt_path: str, dataset, warn=print) -> dict:
    """{label: category id} of the checkpoint; every category of ``dataset`` must be one of its (same id and name)."""
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
