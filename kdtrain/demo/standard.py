"""The standard demo: teacher vs student vs distilled student on procedural shapes, offline on CPU."""

from __future__ import annotations

import os
import time

from kdtrain.config import DemoConfig
from kdtrain.data.coco import CocoDetection, collate
from kdtrain.demo.common import (average_runs, distill, prepare_data_and_teacher, run_record, student_config,
                                 write_results)
from kdtrain.distill.cost import measure_step_and_terms
from kdtrain.distill.distiller import Distiller
from kdtrain.engine import FINAL, train
from kdtrain.models import load_detector


def run_standard_demo(d: DemoConfig, log=print) -> dict:
    """Per seed, the student without and with distillation (``d.recipe``), at one iteration budget."""
    started = time.perf_counter()
    data, teacher_path, teacher_row = prepare_data_and_teacher(d, log)
    runs = []
    for seed in d.seeds:
        for recipe in ("none", d.recipe):
            name = "student" if recipe == "none" else f"student+{recipe}"
            cfg = student_config(d, data, os.path.join(d.output_dir, f"{name.replace('+', '_')}-seed{seed}"), seed,
                                 log)
            if recipe != "none":
                distill(cfg, d, recipe, teacher_path, d.distill_weights)
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
    distiller = Distiller(student, teacher, d.recipe, d.distill_weights, log=lambda *a: None,
                          student_scale=d.student_scale)
    train_set = CocoDetection(data["train"]["images"], data["train"]["ann"], train=False)
    images, targets = collate([train_set[i] for i in range(d.batch_size)])
    return measure_step_and_terms(distiller, images, targets, repeats=5)
