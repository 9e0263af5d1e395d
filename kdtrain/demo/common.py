"""Pieces both demo variants share: the cached dataset, backbones and teacher, student runs, the results table.

The papers' students and teachers start from ImageNet-pretrained backbones; offline, the demo pretrains
both backbones on a generated classification task (kdtrain/pretrain.py, docs/recipes.md "The regime").
The dataset, the backbones and the teacher are cached (keyed by their settings), so a rerun only trains
the students; a cached backbone that does not load is pretrained again, never used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time

from kdtrain.architectures import PRETRAINABLE, backbone_network
from kdtrain.config import DemoConfig, TrainConfig, check_range
from kdtrain.data.coco import CocoDetection
from kdtrain.data.synthetic import make_shapes_dataset
from kdtrain.distributed import DistInfo
from kdtrain.engine import FINAL, train
from kdtrain.errors import UsageError
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


def pretrained_backbone(d: DemoConfig, arch: str, log=print):
    """The cached pretrained backbone file of ``arch`` (pretrained here when missing or unreadable), or None
    when ``d.pretrain_steps`` is 0 (backbones from random initialisation)."""
    from kdtrain.pretrain import load_backbone_file, pretrain_backbone

    check_range("pretrain_steps", d.pretrain_steps, "--pretrain-steps")
    network = backbone_network(arch)
    if not d.pretrain_steps:
        return None
    if network is None:
        raise UsageError(f"the demo pretrains the backbones of {', '.join(PRETRAINABLE)}, not {arch}; "
                         "give one of them, or --pretrain-steps 0")
    path = os.path.join(d.cache_dir, f"backbone-{network}-{cache_key(network, d.pretrain_steps, 'v1')}.pth")
    if os.path.isfile(path):
        try:
            load_backbone_file(path, network)
            log(f"[demo] reusing cached pretrained backbone {path}")
            return path
        except UsageError as e:
            log(f"[demo] the cached backbone does not load ({e}): pretraining it again")
    log(f"[demo] pretraining the {network} backbone for {d.pretrain_steps} steps (once; cached in {d.cache_dir})")
    pretrain_backbone(network, path, steps=d.pretrain_steps, progress=d.progress, log=log)
    return path


def _base_config(d: DemoConfig, data: dict, output_dir: str, seed: int, anchors, arch: str, log) -> TrainConfig:
    return TrainConfig(
        arch=arch, weights_backbone=pretrained_backbone(d, arch, log),
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

    backbone = pretrained_backbone(d, d.teacher_arch, log)
    teacher_dir = os.path.join(d.cache_dir, "teacher-" + cache_key(data_root, d.teacher_arch, d.teacher_iterations,
                                                              d.batch_size, d.lr, FAST_HEADS, d.teacher_anchors,
                                                              backbone, "v2"))
    teacher_path = os.path.join(teacher_dir, FINAL)
    if os.path.isfile(teacher_path) and not d.retrain_teacher:
        log(f"[demo] reusing cached teacher {teacher_path}")
        teacher, _, _ = load_detector(teacher_path)
        val_set = CocoDetection(data["val"]["images"], data["val"]["ann"])
        metrics = evaluate(teacher, val_set, DistInfo(), 8, 0, d.progress, desc="eval[teacher]")
        return data, teacher_path, {**metrics, "params": count_parameters(teacher),
                                    "train_seconds_per_iter": None, "cached": True}
    cfg = _base_config(d, data, teacher_dir, seed=0, anchors=d.teacher_anchors, arch=d.teacher_arch, log=log)
    cfg.iterations = d.teacher_iterations
    # An interrupted demo continues its teacher from the last checkpoint; a retrained one starts afresh.
    cfg.resume = None if d.retrain_teacher else "auto"
    log(f"[demo] training teacher {d.teacher_arch} for {d.teacher_iterations} iterations")
    s = train(cfg, log=log)
    return data, teacher_path, {**s["eval"], "params": s["params"], "train_seconds_per_iter": s["train_seconds_per_iter"]}


def student_config(d: DemoConfig, data: dict, run_dir: str, seed: int, log=print) -> TrainConfig:
    """A fresh undistilled student run (stale results of an earlier demo are removed first); at
    ``d.student_scale`` of the teacher's input side."""
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = _base_config(d, data, run_dir, seed, anchors=d.student_anchors, arch=d.student_arch, log=log)
    cfg.iterations = d.student_iterations
    cfg.min_size = cfg.max_size = round(d.image_size * d.student_scale)
    return cfg


def distill(cfg: TrainConfig, d: DemoConfig, recipe: str, teacher_path: str, weights=None) -> TrainConfig:
    """``cfg`` (a student_config) distilled from the teacher by ``recipe``: the same student network and input
    (--student-scale: the teacher keeps its full-resolution input, the student sees it scaled)."""
    cfg.recipe, cfg.teacher, cfg.distill_weights = recipe, teacher_path, weights
    cfg.distill_warmup, cfg.imitation_mask, cfg.trust_teacher = d.distill_warmup, d.imitation_mask, d.trust_teacher
    if d.student_scale != 1.0:
        cfg.min_size = cfg.max_size = d.image_size
        cfg.student_scale = d.student_scale
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
    teacher = f"teacher {d.teacher_arch} {d.teacher_iterations} it, {d.image_size} px" + (
        " (cached)" if rows["teacher"].get("cached") else "")
    pretrained = f"backbones pretrained {d.pretrain_steps} steps" if d.pretrain_steps else "backbones from scratch"
    return (f"budget: {teacher}; each student {d.student_arch} {d.student_iterations} it{students}, "
            f"batch {d.batch_size}, {round(d.image_size * d.student_scale)} px; {pretrained}; "
            f"seeds {', '.join(map(str, d.seeds))}; wall time {wall_seconds / 60:.1f} min")


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
