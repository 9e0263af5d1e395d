"""Bad data gives errors that name the file, the json key or the annotation."""

import json
import os
import shutil

import pytest
import torch

from kdtrain.data.coco import CocoDetection, DatasetError
from kdtrain.data.batching import TrainBatchStream, grouped_batches, aspect_ratio_bins


def _copy(tiny_data, tmp_path, edit):
    data = json.load(open(tiny_data["train"]["ann"]))
    edit(data)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    return tiny_data["train"]["images"], str(ann)


def test_loads_and_maps_labels(tiny_data):
    ds = CocoDetection(tiny_data["train"]["images"], tiny_data["train"]["ann"], train=False)
    image, target = ds[0]
    assert image.shape[0] == 3 and image.dtype == torch.float32 and float(image.max()) <= 1.0
    assert target["boxes"].shape[1] == 4 and (target["boxes"][:, 2:] > target["boxes"][:, :2]).all()
    assert ds.num_classes == 6 and ds.label_to_cat_id == {i: i for i in range(1, 6)}


def test_missing_image_names_the_file(tiny_data, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(tiny_data["train"]["images"], images)
    os.remove(images / "000003.png")
    with pytest.raises(DatasetError, match="000003.png"):
        CocoDetection(str(images), tiny_data["train"]["ann"])


def test_corrupt_json(tmp_path, tiny_data):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [1, 2')
    with pytest.raises(DatasetError, match="corrupt json"):
        CocoDetection(tiny_data["train"]["images"], str(bad))


def test_missing_key_is_named(tiny_data, tmp_path):
    images, ann = _copy(tiny_data, tmp_path, lambda d: d.pop("categories"))
    with pytest.raises(DatasetError, match="missing key 'categories'"):
        CocoDetection(images, ann)


def test_annotation_without_bbox_is_named(tiny_data, tmp_path):
    images, ann = _copy(tiny_data, tmp_path, lambda d: d["annotations"][2].pop("bbox"))
    with pytest.raises(DatasetError, match=r"annotations\[2\].*missing key 'bbox'"):
        CocoDetection(images, ann)


def test_empty_annotation_list(tiny_data, tmp_path):
    images, ann = _copy(tiny_data, tmp_path, lambda d: d.update(annotations=[]))
    with pytest.raises(DatasetError, match="annotation list is empty"):
        CocoDetection(images, ann, train=True)
    # An evaluation set without annotations is allowed (nothing to train on, still loadable).
    assert len(CocoDetection(images, ann, train=False)) == 8


def test_degenerate_box_error_and_skip(tiny_data, tmp_path):
    def edit(d):
        d["annotations"][1]["bbox"] = [10, 10, 0, 5]
    images, ann = _copy(tiny_data, tmp_path, edit)
    with pytest.raises(DatasetError, match=r"annotations\[1\].*degenerate box"):
        CocoDetection(images, ann)
    ds = CocoDetection(images, ann, invalid_boxes="skip")
    assert ds.skipped_annotations == 1


def test_unreadable_image(tiny_data, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(tiny_data["train"]["images"], images)
    (images / "000000.png").write_bytes(b"not a png")
    ds = CocoDetection(str(images), tiny_data["train"]["ann"])
    with pytest.raises(DatasetError, match="cannot read image .*000000.png"):
        ds[0]


def test_flip_moves_boxes_and_is_deterministic(tiny_data):
    ds = CocoDetection(tiny_data["train"]["images"], tiny_data["train"]["ann"], train=True, hflip_prob=1.0)
    plain = CocoDetection(tiny_data["train"]["images"], tiny_data["train"]["ann"], train=False)
    img, t = ds[0]
    img0, t0 = plain[0]
    assert torch.equal(img, img0.flip(-1))
    w = img.shape[-1]
    assert torch.allclose(t["boxes"][:, 0], w - t0["boxes"][:, 2])


def test_batches_group_aspect_ratios_and_resume_by_skipping():
    groups = aspect_ratio_bins([0.5, 2.0, 0.5, 2.0, 0.5, 2.0], 3)
    batches = grouped_batches(list(range(6)), groups, 2)
    assert groups[0] != groups[1]
    # Full batches share a group; the leftovers of both groups are batched together at the end.
    assert batches == [[0, 2], [1, 3], [4, 5]]


def test_stream_resume_continues_the_same_sequence(tiny_data):
    ds = CocoDetection(tiny_data["train"]["images"], tiny_data["train"]["ann"], train=True)
    stream = TrainBatchStream(ds, 3, seed=5)
    full = [tuple(t["image_id"] for t in tg) for _, _, tg in _take(stream.iterate(0), 7)]
    resumed = [tuple(t["image_id"] for t in tg) for _, _, tg in _take(stream.iterate(4), 3)]
    assert resumed == full[4:7]


def _take(it, n):
    return [next(it) for _ in range(n)]
