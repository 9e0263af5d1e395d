"""The demo's label-scarce variant (Banitalebi 2021): two-step distillation vs supervised training.

Only ``labeled_fraction`` of the generated training images keep their labels;
the rest are unlabeled. As in the paper, the teacher was trained with more
labels than the student gets (here: the standard demo's teacher, trained on
all of them). At one equal iteration budget B per student and seed:

- ``student (labeled N%)``: supervised on the labeled images alone, B iterations;
- ``student two-step``: step 1 learns from the teacher's pseudo-labels on every
  training image with imitation masked by the teacher's boxes, for
  ``step1_share`` x B iterations; step 2 fine-tunes on the labeled images for the
  rest of B at half the learning rate (a fine-tune). The step-1 student is
  evaluated too (``student pseudo-only``).
"""

from __future__ import annotations

import os
import time

from kdtrain.config import DemoConfig, PseudoLabelConfig, TwoStepConfig
from kdtrain.demo.common import (average_runs, cache_key, prepare_data_and_teacher, run_record, student_config,
                                 write_results)
from kdtrain.distributed import DistInfo
from kdtrain.engine import train
from kdtrain.errors import UsageError
from kdtrain.pseudo.labeler import pseudo_label
from kdtrain.two_step import run_two_step

FINE_TUNE_LR_FACTOR = 0.5  # step 2 starts from a trained student


def _pseudo_labels(d: DemoConfig, data: dict, teacher_path: str, log) -> str:
    """The teacher's labels for every training image, cached next to the teacher."""
    path = os.path.join(os.path.dirname(teacher_path), "pseudo-" + cache_key(
        data["train"]["ann"], d.pseudo_score_threshold, "v1") + ".json")
    if os.path.isfile(path):
        log(f"[demo] reusing pseudo-labels {path}")
        return path
    log(f"[demo] teacher pseudo-labels the {d.train_images} training images (labels ignored)")
    started = time.perf_counter()
    pseudo_label(PseudoLabelConfig(
        teachers=[teacher_path], images=data["train"]["images"], output=path,
        categories_from=data["train"]["ann"], score_threshold=d.pseudo_score_threshold,
        batch_size=8, workers=d.workers, progress=d.progress), DistInfo(), log=log)
    log(f"[demo] pseudo-labelling: {d.train_images / (time.perf_counter() - started):.1f} images/s")
    return path


def run_label_scarce_demo(d: DemoConfig, log=print) -> dict:
    if not 0.0 < d.labeled_fraction < 1.0:
        raise UsageError(f"labeled_fraction must be in (0, 1) for the label-scarce demo, got {d.labeled_fraction}")
    if not 0.0 < d.step1_share < 1.0:
        raise UsageError(f"step1_share must be in (0, 1), got {d.step1_share}")
    started = time.perf_counter()
    data, teacher_path, teacher_row = prepare_data_and_teacher(d, log)
    pseudo_ann = _pseudo_labels(d, data, teacher_path, log)
    percent = f"{d.labeled_fraction:.0%}"
    step1_iters = max(1, round(d.step1_share * d.student_iterations))
    step2_iters = d.student_iterations - step1_iters
    supervised = f"student (labeled {percent})"
    runs = []
    for seed in d.seeds:
        cfg = student_config(d, data, os.path.join(d.output_dir, f"supervised-seed{seed}"), seed)
        cfg.labeled_fraction = d.labeled_fraction  # the labeled subset is fixed (labeled_subset_seed), not per seed
        log(f"[demo] training {supervised} (seed {seed}) for {d.student_iterations} iterations")
        runs.append(run_record(supervised, seed, train(cfg, log=log)))

        base = student_config(d, data, os.path.join(d.output_dir, f"two_step-seed{seed}"), seed)
        base.labeled_fraction, base.teacher = d.labeled_fraction, teacher_path
        base.distill_weights, base.distill_warmup, base.trust_teacher = d.distill_weights, d.distill_warmup, \
            d.trust_teacher
        log(f"[demo] two-step student (seed {seed}): {step1_iters} iterations on pseudo-labels, "
            f"then {step2_iters} on the labeled {percent}")
        out = run_two_step(TwoStepConfig(base=base, pseudo_ann=pseudo_ann, step1_iterations=step1_iters,
                                         step2_iterations=step2_iters, step2_lr=d.lr * FINE_TUNE_LR_FACTOR), log=log)
        runs.append(run_record("student pseudo-only", seed, out["step1"]))
        both = run_record("student two-step", seed, out["step2"])
        both["train_seconds_per_iter"] = (
            out["step1"]["train_seconds_per_iter"] * step1_iters
            + out["step2"]["train_seconds_per_iter"] * step2_iters) / d.student_iterations
        runs.append(both)
    rows = {"teacher": teacher_row, **average_runs(runs)}
    title = f"kdtrain label-scarce demo: {percent} labels, equal budget, {len(d.seeds)} seed(s)"
    return write_results(d, rows, runs, started, log, title=title, baseline=supervised,
                         students=f" (two-step: {step1_iters} on pseudo-labels + {step2_iters} on labels)",
                         variant="label-scarce", pseudo_labels=pseudo_ann,
                         budget_iterations={"supervised": d.student_iterations, "step1": step1_iters,
                                            "step2": step2_iters})
