"""The built-in demo: teacher vs student vs distilled student on procedural shapes.

Runs offline on CPU. The dataset and the teacher are cached (keyed by their
settings), so a rerun only trains the two students.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time

from kdtrain.config import CHOICES, DemoConfig, TrainConfig
from kdtrain.data.coco import CocoDetection, collate
from kdtrain.distill.cost import measure_step_and_terms
from kdtrain.distill.distiller import Distiller
from kdtrain.data.synthetic import make_shapes_dataset
from kdtrain.distributed import DistInfo
from kdtrain.engine import FINAL, train
from kdtrain.errors import UsageError
from kdtrain.evaluate import METRIC_NAMES, evaluate
from kdtrain.models import count_parameters, load_detector
from kdtrain.report import format_table, write_plot

# Small, fast Faster R-CNN settings shared by teacher and students: fewer
# proposals and sampled ROIs (the ROI box head and torchvision's CPU roi_align
# backward dominate a CPU step at this image size).
FAST_HEADS = {
    "box_batch_size_per_image": 32,
    "rpn_pre_nms_top_n_train": 600, "rpn_post_nms_top_n_train": 300,
    "rpn_pre_nms_top_n_test": 300, "rpn_post_nms_top_n_test": 150,
    "box_detections_per_img": 50,
}


def _key(*parts) -> str:
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
    data_root = os.path.join(d.cache_dir, "shapes-" + _key(d.image_size, d.train_images, d.val_images, "v2"))
    log(f"[demo] dataset: {data_root}")
    data = make_shapes_dataset(data_root, d.train_images, d.val_images, size=d.image_size)

    teacher_dir = os.path.join(d.cache_dir, "teacher-" + _key(data_root, d.teacher_arch, d.teacher_iterations,
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


def run_demo(d: DemoConfig, log=print) -> dict:
    if d.variant == "label-scarce":
        from kdtrain.demo_label_scarce import run_label_scarce_demo  # it builds on this module

        return run_label_scarce_demo(d, log)
    if d.variant not in CHOICES["variant"]:
        raise UsageError(f"DemoConfig.variant must be one of {', '.join(CHOICES['variant'])}, got {d.variant!r}")
    started = time.perf_counter()
    data, teacher_path, teacher_row = prepare_data_and_teacher(d, log)
    runs = []
    for seed in d.seeds:
        for recipe in ("none", d.recipe):
            name = "student" if recipe == "none" else f"student+{recipe}"
            cfg = student_config(d, data, os.path.join(d.output_dir, f"{name.replace('+', '_')}-seed{seed}"), seed)
            cfg.recipe = recipe
            if recipe != "none":
                cfg.teacher, cfg.distill_weights = teacher_path, d.distill_weights
                cfg.distill_warmup, cfg.imitation_mask = d.distill_warmup, d.imitation_mask
            log(f"[demo] training {name} (seed {seed}) for {d.student_iterations} iterations")
            runs.append(run_record(name, seed, train(cfg, log=log)))
    rows = {"teacher": teacher_row, **average_runs(runs)}
    term_cost = None
    if d.recipe != "none":
        term_cost = profile_terms(d, data, teacher_path, os.path.join(
            d.output_dir, f"student_{d.recipe}-seed{d.seeds[0]}", FINAL))
        log("[demo] distillation cost per training step: " + ", ".join(
            f"{k} {v * 1000:.1f} ms ({v / term_cost['step']:.1%})" for k, v in term_cost.items() if k != "step")
            + f" of a {term_cost['step'] * 1000:.0f} ms forward+backward")
    title = f"kdtrain demo: student with vs without distillation ({d.recipe}), {len(d.seeds)} seed(s)"
    return write_results(d, rows, runs, started, log, title=title, baseline="student", distill_cost_seconds=term_cost)


def profile_terms(d: DemoConfig, data: dict, teacher_path: str, student_path: str) -> dict:
    """Seconds of a student step and of each distillation term (forward + backward), one demo batch."""
    student, _, _ = load_detector(student_path)
    teacher, _, _ = load_detector(teacher_path)
    distiller = Distiller(student, teacher, d.recipe, d.distill_weights, log=lambda *a: None)
    train_set = CocoDetection(data["train"]["images"], data["train"]["ann"], train=False)
    images, targets = collate([train_set[i] for i in range(d.batch_size)])
    return measure_step_and_terms(distiller, images, targets, repeats=5)
