"""A COCO json that would be read wrongly is refused, naming the entry and the key."""

import json

import pytest

from kdtrain.data.coco import CocoDetection, DatasetError


def _dataset(tiny_data, tmp_path, edit, **kw):
    data = json.load(open(tiny_data["train"]["ann"]))
    edit(data)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    return CocoDetection(tiny_data["train"]["images"], str(ann), **kw)


def _set(key, index, field, value):
    def edit(data):
        data[key][index][field] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    (_set("images", 3, "id", 1), r"images\[3\]: duplicate image id 1 \(also .*images\[0\]\)"),
    (_set("annotations", 4, "id", 1), r"annotations\[4\] \(id 1\): duplicate annotation id 1"),
    (_set("categories", 2, "id", 1), r"categories\[2\]: duplicate category id 1"),
    (_set("annotations", 2, "category_id", 1.7), r"annotations\[2\].*'category_id' must be an integer, got 1.7"),
    (_set("annotations", 2, "image_id", "3"), r"annotations\[2\].*'image_id' must be an integer, got '3'"),
    (_set("annotations", 2, "image_id", True), r"'image_id' must be an integer, got True"),
    (_set("images", 1, "id", 2.5), r"images\[1\]: 'id' must be an integer, got 2.5"),
    (_set("images", 1, "width", "wide"), r"images\[1\]: 'width' must be a positive number"),
    (lambda d: d["annotations"].insert(1, 7), r"annotations\[1\] must be an object, got 7"),
    (lambda d: d["images"].insert(0, "a.png"), r"images\[0\] must be an object, got 'a.png'"),
    (lambda d: d["categories"].append(None), r"categories\[5\] must be an object, got None"),
])
def test_ambiguous_entries_are_refused(tiny_data, tmp_path, edit, message):
    with pytest.raises(DatasetError, match=message):
        _dataset(tiny_data, tmp_path, edit)


def test_integral_float_ids_are_the_same_ids(tiny_data, tmp_path):
    ds = _dataset(tiny_data, tmp_path, _set("annotations", 0, "category_id", 2.0))
    plain = CocoDetection(tiny_data["train"]["images"], tiny_data["train"]["ann"])
    assert ds.labels[0][0] == 2 and sum(map(len, ds.labels)) == sum(map(len, plain.labels))


@pytest.mark.parametrize("bbox", [[70, 10, 5, 5], [-20, 10, 10, 5], [10, 64, 5, 5]])
def test_box_outside_its_image_is_an_error_or_skipped(tiny_data, tmp_path, bbox):
    edit = _set("annotations", 3, "bbox", bbox)  # the tiny images are 64 x 64
    with pytest.raises(DatasetError, match=r"annotations\[3\].*box entirely outside its 64x64 image.*"
                                           r"--invalid-boxes skip"):
        _dataset(tiny_data, tmp_path, edit)
    skipped = _dataset(tiny_data, tmp_path, edit, invalid_boxes="skip")
    plain = CocoDetection(tiny_data["train"]["images"], tiny_data["train"]["ann"])
    assert skipped.skipped_annotations == 1
    assert sum(map(len, skipped.boxes)) == sum(map(len, plain.boxes)) - 1


def test_box_outside_uses_the_image_header_when_the_json_has_no_size(tiny_data, tmp_path):
    def edit(data):
        for img in data["images"]:
            img.pop("width"), img.pop("height")
        data["annotations"][3]["bbox"] = [64, 0, 3, 3]
    with pytest.raises(DatasetError, match="entirely outside its 64x64 image"):
        _dataset(tiny_data, tmp_path, edit)


def test_a_box_partly_inside_is_kept(tiny_data, tmp_path):
    ds = _dataset(tiny_data, tmp_path, _set("annotations", 3, "bbox", [60, 60, 10, 10]))
    assert ds.skipped_annotations == 0
