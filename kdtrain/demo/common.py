"""Pieces both demo variants share: the cached dataset and teacher, student runs, the results table.

The dataset and the teacher are cached (keyed by their settings), so a rerun only trains the students.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time

from kdtrain.config import DemoConfig, TrainConfig
from kdtrain.data.coco import CocoDetection
from kdtrain.data.synthetic import make_shapes_dataset
from kdtrain.distributed import DistInfo
from kdtrain.engine import FINAL, train
from kdtrain.evaluate import METRIC_NAMES, evaluate
from kdtrain.models import count_parameters, load_detector
from kdtrain.result_plots import format_table, write_plot

# Small, fast Faster R-CNN settings shared by teacher and students: fewer
# proposals and sampled ROIs (the ROI box head and torchvision's CPU roi_align
# backward dominate a CPU step at this image size).
FAST_HEADS = {
    "box_batch_size_per_image": 32,
    "rpn_pre_nms_top_n_train": 600, "rpn_post_nms_top_n_train": 300,
    "rpn_pre_nms_top_n_test": 300, "rpn_post_nms_top_n_test": 150,
    "box_detections_per_img": 50,
}


def cache_key(*parts) -> str:
    """A short hash of the settings a cached artefact depends on (its folder or file name)."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _base_config(d: DemoConfig, data: dict, output_dir: str, seed: int, anchors) -> TrainConfig:
    return TrainConfig(
        train_images=data["train"]["images"], train_ann=data["train"]["ann"],
        val_images=data["val"]["images"], val_ann=data["val"]["ann"],
        min_size=d.image_size, max_size=d.image_size, model_kwargs={**FAST_HEADS, "anchor_sizes": list(anchors)},
        batch_size=d.batch_size, lr=d.lr, lr_warmup=30, lr_schedule="cosine", workers=d.workers,
        output_dir=output_dir, seed=seed, threads=d.threads, checkpoint_every=100, log_every=10,
        progress=d.progress, device="auto", eval_batch_size=8,
    )


def prepare_data_and_teacher(d: DemoConfig, log=print) -> tuple[dict, str, dict]:
    """The cached dataset and teacher (trained here when missing); returns (data, teacher_path, teacher_row)."""
    data_root = os.path.join(d.cache_dir, "shapes-" + cache_key(d.image_size, d.train_images, d.val_images, "v2"))
    log(f"[demo] dataset: {data_root}")
    data = make_shapes_dataset(data_root, d.train_images, d.val_images, size=d.image_size)

    teacher_dir = os.path.join(d.cache_dir, "teacher-" + cache_key(data_root, d.teacher_arch, d.teacher_iterations,
                                                              d.batch_size, d.lr, FAST_HEADS, d.teacher_anchors, "v2"))
    teacher_path = os.path.join(teacher_dir, FINAL)
    if os.path.isfile(teacher_path) and not d.retrain_teacher:
        log(f"[demo] reusing cached teacher {teacher_path}")
        teacher, _, _ = load_detector(teacher_path)
        val_set = CocoDetection(data["val"]["images"], data["val"]["ann"])
        metrics = evaluate(teacher, val_set, DistInfo(), 8, 0, d.progress, desc="eval[teacher]")
        return data, teacher_path, {**metrics, "params": count_parameters(teacher),
                                    "train_seconds_per_iter": None, "cached": True}
    cfg = _base_config(d, data, teacher_dir, seed=0, anchors=d.teacher_anchors)
    cfg.arch, cfg.iterations = d.teacher_arch, d.teacher_iterations
    # An interrupted demo continues its teacher from the last checkpoint; a retrained one starts afresh.
    cfg.resume = None if d.retrain_teacher else "auto"
    log(f"[demo] training teacher {d.teacher_arch} for {d.teacher_iterations} iterations")
    s = train(cfg, log=log)
    return data, teacher_path, {**s["eval"], "params": s["params"], "train_seconds_per_iter": s["train_seconds_per_iter"]}


def student_config(d: DemoConfig, data: dict, run_dir: str, seed: int) -> TrainConfig:
    """A fresh student run (stale results of an earlier demo are removed first)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = _base_config(d, data, run_dir, seed, anchors=d.student_anchors)
    cfg.arch, cfg.iterations = d.student_arch, d.student_iterations
    return cfg


def run_record(name: str, seed: int, summary: dict) -> dict:
    return {"name": name, "seed": seed, **summary["eval"], "params": summary["params"],
            "train_seconds_per_iter": summary["train_seconds_per_iter"],
            "distill_term_seconds_per_iter": summary.get("distill_term_seconds_per_iter")}


def _mean(values: list):
    """None when any value is None (an AP group without ground truth is n/a for every seed)."""
    return None if None in values else sum(values) / len(values)


def average_runs(runs: list[dict]) -> dict:
    """One table row per run name: metrics averaged over its seeds (the per-seed records stay in ``runs``)."""
    rows = {}
    for name in dict.fromkeys(r["name"] for r in runs):
        mine = [r for r in runs if r["name"] == name]
        rows[name] = {k: _mean([r[k] for r in mine]) for k in
                      (*METRIC_NAMES, "images_per_s", "train_seconds_per_iter")}
        rows[name]["params"] = mine[0]["params"]
        rows[name]["seeds"] = [r["seed"] for r in mine]
        rows[name]["mAP_per_seed"] = [r["mAP"] for r in mine]
    return rows


def budget_caption(d: DemoConfig, rows: dict, wall_seconds: float, students: str = "") -> str:
    """What the numbers cost: iterations of teacher and students, seeds, wall time."""
    teacher = f"teacher {d.teacher_arch} {d.teacher_iterations} it" + (
        " (cached)" if rows["teacher"].get("cached") else "")
    return (f"budget: {teacher}; each student {d.student_arch} {d.student_iterations} it{students}, "
            f"batch {d.batch_size}, {d.image_size} px; seeds {', '.join(map(str, d.seeds))}; "
            f"wall time {wall_seconds / 60:.1f} min")


def write_results(d: DemoConfig, rows: dict, runs: list[dict], started: float, log=print, *, title: str,
                  baseline: str, students: str = "", **extra) -> dict:
    """demo_results.json, the plot (``baseline``: the undistilled student the others are compared to), the table."""
    result = {"config": dataclasses.asdict(d), "rows": rows, "runs": runs, **extra,
              "wall_seconds": time.perf_counter() - started}
    os.makedirs(d.output_dir, exist_ok=True)
    with open(os.path.join(d.output_dir, "demo_results.json"), "w") as f:
        json.dump(result, f, indent=2)
    write_plot(rows, runs, os.path.join(d.output_dir, "demo_results.png"), title, baseline,
               budget_caption(d, rows, result["wall_seconds"], students))
    log(format_table(rows))
    log(f"[demo] wall time {result['wall_seconds'] / 60:.1f} min; results in {d.output_dir}/demo_results.json, "
        f"plot in {d.output_dir}/demo_results.png")
    return result
