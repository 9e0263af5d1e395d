"""pseudo-label: teachers write COCO json that pycocotools loads; multi-teacher merge; clear errors."""

import json
import shutil
import types

import pytest
import torch
from pycocotools.coco import COCO

from kdtrain.cli import main
from kdtrain.data.coco import CocoDetection, DatasetError
from kdtrain.engine import export_student
from kdtrain.models import build_detector
from kdtrain.pseudo.class_map import ClassMapError
from kdtrain.pseudo.labeler import filter_detections

from kdtrain_testutil import STUDENT, tiny_spec

ANIMALS = [{"id": 7, "name": "dog"}, {"id": 9, "name": "cat"}]


@pytest.fixture(scope="module")
def animal_teacher(tmp_path_factory):
    """A second teacher with a class set disjoint from the shapes teacher's."""
    torch.manual_seed(1)
    spec = tiny_spec(STUDENT, num_classes=3)
    path = str(tmp_path_factory.mktemp("animal_teacher") / "model_final.pth")
    labels = types.SimpleNamespace(categories=ANIMALS, label_to_cat_id={1: 7, 2: 9})
    export_student(build_detector(spec), spec, labels, path)
    return path


def _label(tiny_data, out, *teachers_and_flags):
    # Random-init teachers score low: threshold 0 keeps their boxes so the json is not empty.
    args = ["pseudo-label", "--images", tiny_data["val"]["images"], "--output", str(out),
            "--score-threshold", "0", "--max-detections", "5", "--batch-size", "3", "--workers", "0",
            "--no-progress", *map(str, teachers_and_flags)]
    assert main(["--debug", *args]) == 0  # --debug: errors raise instead of exiting with the usage line
    return json.load(open(out))


def test_one_teacher_writes_coco_json_pycocotools_loads(tiny_data, teacher_ckpt, tmp_path):
    out = tmp_path / "pseudo.json"
    data = _label(tiny_data, out, "--teacher", teacher_ckpt, "--keep-empty")
    coco = COCO(str(out))
    assert len(coco.getImgIds()) == 4  # every image, with its size
    assert all(img["width"] == 64 and img["height"] == 64 for img in data["images"])
    assert [c["name"] for c in data["categories"]] == ["disc", "ring", "square", "triangle", "cross"]
    per_image = {}
    for ann in data["annotations"]:
        per_image[ann["image_id"]] = per_image.get(ann["image_id"], 0) + 1
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0 and 0.0 <= ann["score"] <= 1.0 and ann["category_id"] in range(1, 6)
    assert data["annotations"] and max(per_image.values()) <= 5
    # The json trains as it is: kdtrain reads it as a dataset.
    assert len(CocoDetection(tiny_data["val"]["images"], str(out), train=True)) == 4


def test_score_threshold_and_empty_images_are_dropped(tiny_data, teacher_ckpt, tmp_path):
    data = _label(tiny_data, tmp_path / "p.json", "--teacher", teacher_ckpt, "--score-threshold", "1")  # the top
    assert data["images"] == [] and data["annotations"] == []


def test_two_teachers_disjoint_classes_merge_through_mapping(tiny_data, teacher_ckpt, animal_teacher, tmp_path):
    shapes_map = tmp_path / "shapes.json"
    shapes_map.write_text(json.dumps({"disc": "round", "ring": "round", "square": "angular", "4": "angular",
                                      "cross": None}))  # "4" is triangle's category id
    animals_map = tmp_path / "animals.yaml"
    animals_map.write_text("dog: animal\n9: animal\n")
    out = tmp_path / "merged.json"
    data = _label(tiny_data, out, "--teacher", teacher_ckpt, "--teacher", animal_teacher,
                  "--class-map", shapes_map, "--class-map", animals_map, "--keep-empty")
    COCO(str(out))
    assert [c["name"] for c in data["categories"]] == ["round", "angular", "animal"]
    cats = {a["category_id"] for a in data["annotations"]}
    assert cats <= {1, 2, 3} and 3 in cats and (cats & {1, 2})  # both teachers contributed
    # Union: every teacher keeps its own boxes (each at most --max-detections per image).
    single = _label(tiny_data, tmp_path / "one.json", "--teacher", animal_teacher, "--class-map", animals_map,
                    "--keep-empty")
    assert sum(a["category_id"] == 3 for a in data["annotations"]) == len(single["annotations"])


def test_merge_nms_removes_overlaps_across_teachers(tiny_data, teacher_ckpt, tmp_path):
    # The same teacher twice: the union doubles every box, NMS after the merge removes the copies.
    union = _label(tiny_data, tmp_path / "u.json", "--teacher", teacher_ckpt, "--teacher", teacher_ckpt)
    nms = _label(tiny_data, tmp_path / "n.json", "--teacher", teacher_ckpt, "--teacher", teacher_ckpt,
                 "--merge-nms-iou", "0.9")
    assert len(union["annotations"]) == 2 * len(nms["annotations"]) > 0


def test_categories_from_a_labeled_json_keep_its_ids(tiny_data, teacher_ckpt, tmp_path):
    data = _label(tiny_data, tmp_path / "p.json", "--teacher", teacher_ckpt,
                  "--categories-from", tiny_data["val"]["ann"])
    assert data["categories"] == json.load(open(tiny_data["val"]["ann"]))["categories"]


def test_unknown_class_in_mapping_file(tiny_data, teacher_ckpt, tmp_path):
    bad = tmp_path / "map.json"
    bad.write_text(json.dumps({"hexagon": "round"}))
    with pytest.raises(ClassMapError, match="unknown class 'hexagon'.*disc"):
        _label(tiny_data, tmp_path / "p.json", "--teacher", teacher_ckpt, "--class-map", bad)
    bad.write_text(json.dumps({"disc": "round"}))
    with pytest.raises(ClassMapError, match="unknown student class 'round'"):
        _label(tiny_data, tmp_path / "p.json", "--teacher", teacher_ckpt, "--class-map", bad,
               "--categories-from", tiny_data["val"]["ann"])


def test_empty_folder(teacher_ckpt, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        main(["--debug", "pseudo-label", "--teacher", teacher_ckpt, "--images", str(tmp_path / "empty"),
              "--output", str(tmp_path / "p.json"), "--no-progress"])


def test_unreadable_image_is_named(tiny_data, teacher_ckpt, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(tiny_data["val"]["images"], images)
    (images / "zz_broken.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="zz_broken.png"):
        main(["--debug", "pseudo-label", "--teacher", teacher_ckpt, "--images", str(images),
              "--output", str(tmp_path / "p.json"), "--no-progress"])
    assert not (tmp_path / "p.json").exists()


def test_filter_detections_threshold_nms_topk():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10.]])
    scores = torch.tensor([0.9, 0.8, 0.3, 0.7])
    labels = torch.tensor([1, 1, 1, 2])
    b, s, l = filter_detections(boxes, scores, labels, 0.5, 0.5, None)
    assert s.tolist() == pytest.approx([0.9, 0.7]) and l.tolist() == [1, 2]  # class-wise NMS
    b, s, l = filter_detections(boxes, scores, labels, 0.0, None, 2)
    assert s.tolist() == pytest.approx([0.9, 0.8])


@pytest.mark.slow
def test_two_cpu_processes_shard_and_merge_like_one(tiny_data, teacher_ckpt, tmp_path):
    import os
    import subprocess
    import sys

    from kdtrain_testutil import REPO

    single = _label(tiny_data, tmp_path / "single.json", "--teacher", teacher_ckpt, "--keep-empty")
    out = tmp_path / "ddp.json"
    args = ["pseudo-label", "--images", tiny_data["val"]["images"], "--output", str(out), "--teacher", teacher_ckpt,
            "--score-threshold", "0", "--max-detections", "5", "--batch-size", "3", "--workers", "0",
            "--keep-empty", "--no-progress", "--device", "cpu"]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "kdtrain", *args]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    merged = json.load(open(out))
    assert sorted(i["file_name"] for i in merged["images"]) == sorted(i["file_name"] for i in single["images"])

    def boxes(data):
        names = {i["id"]: i["file_name"] for i in data["images"]}
        return sorted((names[a["image_id"]], a["category_id"], *[round(v, 3) for v in a["bbox"]])
                      for a in data["annotations"])

    assert boxes(merged) == boxes(single)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]


def test_an_image_that_fails_is_left_out_and_named_the_others_are_labelled(tiny_data, teacher_ckpt, tmp_path,
                                                                          monkeypatch, capsys):
    """One image cannot be read when labelled, another makes the teacher fail: both are named in the log and
    in the json's info, and the other images are labelled."""
    from kdtrain.pseudo import labeler

    real_read, real_boxes = labeler.read_image, labeler._teacher_boxes

    def read_image(path):
        if path.endswith("000001.png"):
            raise DatasetError(f"cannot read image {path}: gone")
        image = real_read(path)
        return image[..., :63] if path.endswith("000002.png") else image  # the one the teacher fails on

    def teacher_boxes(models, label_maps, images, cfg):
        if any(im.shape[-1] == 63 for im in images):
            raise RuntimeError("teacher failed\nsecond line")
        return real_boxes(models, label_maps, images, cfg)

    monkeypatch.setattr(labeler, "read_image", read_image)
    monkeypatch.setattr(labeler, "_teacher_boxes", teacher_boxes)
    out = tmp_path / "pseudo.json"
    data = _label(tiny_data, out, "--teacher", teacher_ckpt, "--keep-empty")
    assert sorted(img["file_name"] for img in data["images"]) == ["000000.png", "000003.png"]
    failed = data["info"]["failed_images"]
    assert failed == {"000001.png": f"DatasetError: cannot read image {tiny_data['val']['images']}/000001.png: gone",
                      "000002.png": "RuntimeError: teacher failed"}
    log = capsys.readouterr().out
    assert "left out 000001.png: DatasetError" in log and "left out 000002.png: RuntimeError: teacher failed" in log
