"""Honest metrics (n/a for a size group without objects) and the demo's plot of the distillation effect."""

import json
import random

from kdtrain.demo import average_runs
from kdtrain.evaluate import coco_metrics
from kdtrain.result_plots import format_table, plotted_metrics, seed_gains, write_plot


def _small_objects_only(tmp_path):
    """Two 64 px images with 10x10 and 20x20 boxes: every object is small (area < 32^2)."""
    data = {"images": [{"id": i, "file_name": f"{i}.png", "width": 64, "height": 64} for i in (1, 2)],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 10, 10], "area": 100,
                             "iscrowd": 0},
                            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [8, 8, 20, 20], "area": 400,
                             "iscrowd": 0}],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    path = tmp_path / "small.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_a_size_group_without_objects_is_none_not_zero(tmp_path):
    ann = _small_objects_only(tmp_path)
    hit = [{"image_id": 1, "category_id": 1, "bbox": [4, 4, 10, 10], "score": 0.9}]
    metrics = coco_metrics(ann, hit)
    assert metrics["APl"] is None and metrics["APm"] is None
    assert metrics["mAP"] > 0 and metrics["APs"] > 0
    empty = coco_metrics(ann, [])  # no detection at all: zero where there are objects, still n/a elsewhere
    assert empty["mAP"] == 0.0 and empty["APs"] == 0.0 and empty["APl"] is None
    assert json.loads(json.dumps(metrics))["APl"] is None  # null in the json


def _fake_runs(names_and_maps, seeds, rng):
    runs = []
    for seed in seeds:
        for name, m in names_and_maps:
            runs.append({"name": name, "seed": seed, "AP75": m / 3, "APl": None, "params": 17.6e6,
                         "images_per_s": 30.0, "train_seconds_per_iter": 0.8,
                         **{k: v * m * (1 + rng.uniform(-0.2, 0.2)) for k, v in
                            (("mAP", 1.0), ("AP50", 4.5), ("APs", 0.9), ("APm", 2.4))}})
    return runs


TEACHER = {"mAP": 0.132, "AP50": 0.256, "AP75": 0.12, "APs": 0.090, "APm": 0.258, "APl": None, "params": 28.3e6,
           "images_per_s": 20.0, "train_seconds_per_iter": None, "cached": True}


def test_seed_means_table_and_gains_keep_none(tmp_path):
    runs = _fake_runs([("student", 0.02), ("student+imitation", 0.024)], (0, 1, 2), random.Random(0))
    rows = {"teacher": TEACHER, **average_runs(runs)}
    assert rows["student"]["APl"] is None and rows["student"]["seeds"] == [0, 1, 2]
    assert abs(rows["student"]["mAP"] - sum(r["mAP"] for r in runs if r["name"] == "student") / 3) < 1e-12
    table = format_table(rows)
    assert table.splitlines()[2].split()[5] == "n/a"  # teacher's APl
    assert "0.000" not in table
    assert plotted_metrics(rows) == ["mAP", "AP50", "APs", "APm"]
    gains = seed_gains(runs, "student+imitation", "student", "mAP")
    by_seed = {(r["name"], r["seed"]): r["mAP"] for r in runs}
    assert gains == [by_seed[("student+imitation", s)] - by_seed[("student", s)] for s in (0, 1, 2)]


def test_plot_of_both_demo_variants_is_a_png(tmp_path):
    rng = random.Random(1)
    cases = {
        "standard": ("student", _fake_runs([("student", 0.02), ("student+imitation", 0.024)], (0, 1, 2), rng)),
        "label_scarce": ("student (labeled 10%)", _fake_runs(
            [("student (labeled 10%)", 0.01), ("student pseudo-only", 0.007), ("student two-step", 0.014)], (0,),
            rng)),
    }
    for variant, (baseline, runs) in cases.items():
        path = tmp_path / f"{variant}.png"
        write_plot({"teacher": TEACHER, **average_runs(runs)}, runs, str(path), f"kdtrain demo ({variant})",
                   baseline, "budget: teacher 300 it (cached); each student 240 it; wall time 12.8 min")
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, variant
