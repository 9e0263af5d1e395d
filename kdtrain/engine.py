"""The training loop: one code path for plain and distilled training, 1 or N processes.

``train`` sets up the process group and ``_train`` reads top to bottom: data, teacher, student,
Distiller, optimizer and schedule, resume, then the loop (forward of the Distiller with the
iteration, backward, step, a metrics record every --log-every, a checkpoint every
--checkpoint-every), the exported student and the final evaluation. The pieces it builds with
follow it (docs/kdtrain.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from kdtrain import checkpoint as ckpt_io
from kdtrain.config import TrainConfig, check_train_config
from kdtrain.data.batching import TrainBatchStream
from kdtrain.data.coco import CocoDetection, DatasetError, keep_labeled_fraction
from kdtrain.data.image_check import check_images
from kdtrain.distill.check import check_batch, run_check
from kdtrain.distill.distiller import Distiller, check_degenerate_boxes
from kdtrain.distributed import DistInfo, barrier, cleanup, init_distributed
from kdtrain.errors import UsageError
from kdtrain.evaluate import evaluate
from kdtrain.metrics_log import MetricsWriter
from kdtrain.model_args import check_model_args
from kdtrain.models import ModelSpec, build_detector, check_weights_name, count_parameters, load_detector
from kdtrain.nonfinite import ELSEWHERE, NonFiniteError, SkippedSteps, agreed, all_finite, culprit, step_flags, \
    stop_message
from kdtrain.resume import FINAL, load_training_state, load_weights, restart_metrics, restore, resume_path
from kdtrain.runtime import amp_dtype, autocast, seed_everything, set_threads


def train(cfg: TrainConfig, log=print) -> dict:
    return _run(_train, cfg, log)


def distill_check(cfg: TrainConfig, log=print) -> dict:
    """``python -m kdtrain check``: the check a distilled ``train`` runs first, alone (nothing is written)."""
    if cfg.recipe == "none":
        raise UsageError("--recipe: the distillation check needs a recipe and a teacher, got recipe none")
    return _run(lambda cfg, info, log: _distill_check(_setup(cfg, info, log), cfg, info.device, log), cfg, log)


def _run(job, cfg: TrainConfig, log):
    """``job(cfg, info, log)`` on a checked config, inside the process group (log on the main process only)."""
    check_train_config(cfg)
    check_model_args(cfg.arch, cfg.model_kwargs)
    check_weights_name(cfg.arch, cfg.weights, "--weights")
    if cfg.teacher_arch:
        check_weights_name(cfg.teacher_arch, cfg.teacher_weights, "--teacher-weights")
    info = init_distributed(cfg.device)
    try:
        return job(cfg, info, log if info.is_main else (lambda *a, **k: None))
    finally:
        cleanup(info)


@dataclasses.dataclass
class Setup:
    """What a run builds before its first step: the data, the models and the distiller."""
    train_set: CocoDetection
    val_set: CocoDetection | None
    spec: ModelSpec
    distiller: Distiller
    teacher_spec: ModelSpec | None
    teacher_names: list | None


def _setup(cfg: TrainConfig, info: DistInfo, log) -> Setup:
    set_threads(cfg.threads, int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size)))
    seed_everything(cfg.seed)
    device = info.device
    train_set, val_set = build_datasets(cfg)
    check_dataset_images((train_set, val_set), info, cfg.progress)
    if cfg.num_classes is not None and cfg.num_classes < train_set.num_classes:
        raise UsageError(f"--num-classes {cfg.num_classes}: the labels of {cfg.train_ann} go up to "
                         f"{train_set.num_classes - 1}, so at least {train_set.num_classes} classes (with the "
                         "background); give that, or leave it unset")
    num_classes = cfg.num_classes or train_set.num_classes
    with torch.random.fork_rng(devices=[]):  # a random-init teacher must not change the student's init
        teacher, teacher_spec, teacher_names = build_teacher(cfg, num_classes) if cfg.recipe != "none" else (
            None, None, None)
    min_size, max_size = student_input_sizes(cfg, teacher, log)
    spec = ModelSpec(cfg.arch, num_classes, cfg.weights, cfg.weights_backbone, min_size, max_size,
                     dict(cfg.model_kwargs))
    student = build_detector(spec)
    if cfg.init:
        init_model, init_spec, _ = load_detector(cfg.init)
        load_weights(student, init_model.state_dict(), f"--init {cfg.init}", init_spec.to_dict(), spec.to_dict())
    distiller = Distiller(student, teacher, cfg.recipe, cfg.distill_weights, cfg.distill_warmup,
                          cfg.imitation_mask, log=log, student_scale=cfg.student_scale,
                          auto_ratio=cfg.distill_auto_ratio, auto_iters=cfg.distill_auto_iters).to(device)
    return Setup(train_set, val_set, spec, distiller, teacher_spec, teacher_names)


def _distill_check(setup: Setup, cfg: TrainConfig, device, log) -> dict:
    """The distillation check's record (kdtrain/distill/check.py) on the run's first training images."""
    images, targets = check_batch(setup.train_set, cfg.batch_size, device)
    return run_check(setup.distiller, images, targets, teacher_spec=setup.teacher_spec,
                     teacher_names=setup.teacher_names, data_names=[c["name"] for c in setup.train_set.categories],
                     trust_teacher=cfg.trust_teacher, log=log)


def _train(cfg: TrainConfig, info: DistInfo, log) -> dict:
    setup = _setup(cfg, info, log)
    device, spec, distiller, train_set, val_set = info.device, setup.spec, setup.distiller, setup.train_set, \
        setup.val_set
    params = [p for p in distiller.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        raise ValueError(f"--optimizer must be sgd or adamw, not {cfg.optimizer!r}")

    stream = TrainBatchStream(train_set, cfg.batch_size, cfg.seed, cfg.workers, cfg.aspect_ratio_group_factor,
                              info.rank, info.world_size)
    total = cfg.iterations if cfg.iterations is not None else \
        epochs_to_iterations(cfg, len(stream.batches_of_epoch(0)))
    scheduler = build_scheduler(optimizer, total, cfg.lr_warmup, cfg.lr_schedule, cfg.lr_steps, cfg.lr_gamma)
    if distiller.auto is not None and cfg.distill_auto_iters >= total:
        raise UsageError(f"--distill-auto-iters {cfg.distill_auto_iters}: the automatic weights would still be "
                         f"calibrating when the run ends; give fewer than its {total} iterations")
    dtype = amp_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

    metrics_path = os.path.join(cfg.output_dir, "metrics.jsonl") if info.is_main else None
    start = 0
    resume = resume_path(cfg)
    if resume:
        state = load_training_state(resume, total)
        start = restore(state, resume, cfg, spec.to_dict(), distiller, optimizer, scheduler, scaler, log)
        log(f"[kdtrain] resumed from {resume} at iteration {start}/{total}")
    if info.is_main:
        os.makedirs(cfg.output_dir, exist_ok=True)
        for name in ckpt_io.remove_torn_writes(cfg.output_dir):
            log(f"[kdtrain] removed {name}, left by a checkpoint write that was killed")
        restart_metrics(metrics_path, start, log)
        with open(os.path.join(cfg.output_dir, "config.json"), "w") as f:
            json.dump(dataclasses.asdict(cfg), f, indent=2, sort_keys=True)
    writer = MetricsWriter(metrics_path, os.path.join(cfg.output_dir, "tb") if cfg.tensorboard and info.is_main else None)

    if distiller.terms:  # the distillation check: the teacher, the pairs, each term's gradient (check.py)
        writer.write(_distill_check(setup, cfg, device, log))
        distiller.grad_ratio_every = cfg.grad_ratio_every

    model = distiller
    if info.enabled:
        model = DistributedDataParallel(distiller, device_ids=[device.index] if device.type == "cuda" else None,
                                        find_unused_parameters=bool(distiller.terms))

    checkpoint = [(resume, start) if resume else None]  # (path, iteration) a stopped run can resume from

    def save(iteration):
        checkpoint[0] = (os.path.join(cfg.output_dir, ckpt_io.LAST), iteration)
        if not info.is_main:
            return
        ckpt_io.atomic_save({
            "model_spec": spec.to_dict(), "model_state": distiller.student.state_dict(),
            "distill_state": distiller.terms.state_dict(), "optimizer": optimizer.state_dict(),
            "auto_weights": distiller.auto.state_dict() if distiller.auto is not None else None,
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "iteration": iteration,
            "rng": ckpt_io.rng_state(), "config": dataclasses.asdict(cfg),
            "categories": train_set.categories, "label_to_cat_id": train_set.label_to_cat_id,
        }, os.path.join(cfg.output_dir, ckpt_io.LAST))

    def stop(at, what, in_a_row=0):
        return NonFiniteError(stop_message(at, what, cfg, distiller.effective_weights(), checkpoint[0], in_a_row))

    def write_record(window, iteration, epoch):
        record = {"kind": "train", "iteration": iteration, "epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
                  **window.means(), "seconds_per_iter": (time.perf_counter() - window_start) / len(window)}
        bar.set_postfix(loss=f"{record['loss']:.3f}")
        writer.write(record)

    def check_finite(window, epoch):
        bad = window.first_nonfinite()
        if bad:
            window.steps = [step for step in window.steps if step[0] < bad[0]]
            if len(window):  # the steps before the bad one, for the record
                write_record(window, bad[0], epoch)
            raise stop(*bad)

    distiller.watch_gradients = True  # which term's gradient went non-finite, if one does
    skips = SkippedSteps(cfg.max_skipped_steps, stop, log, writer.write) if cfg.nonfinite == "skip" else None
    model.train()
    bar = tqdm(total=total, initial=start, desc=f"train[{cfg.recipe}]", disable=not (cfg.progress and info.is_main),
               dynamic_ncols=True)
    batches = stream.iterate(start)
    window, window_start, step_seconds = StepWindow(), time.perf_counter(), 0.0
    term_seconds_sum: dict = {}
    iteration = start
    while iteration < total:
        epoch, images, targets = next(batches)
        step_start = time.perf_counter()
        check_degenerate_boxes(targets)  # on the host's copy: no wait for the device
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
        with autocast(device, dtype):
            losses = model(images, targets, iteration)
        # Records made during the forward: the calibration of the automatic weights, the gradient ratios.
        reports = [distiller.calibration_report(iteration), distiller.gradient_report(iteration)]
        loss = sum(losses.values())
        values = {**losses, "loss": loss, **{f"raw_{k}": v for k, v in distiller.raw.items()}}
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        clipped_norm = None
        if cfg.clip_grad > 0:
            scaler.unscale_(optimizer)
            clipped_norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
        flags = step_flags(gradient_norm(params, clipped_norm, scaler), distiller.grad_flags)
        if skips is None or skips.apply(iteration, values, flags):
            scaler.step(optimizer)
            scaler.update()
            window.add(iteration, values, flags)
        scheduler.step()
        iteration += 1
        step_seconds += time.perf_counter() - step_start
        for k, v in distiller.term_seconds.items():
            term_seconds_sum[k] = term_seconds_sum.get(k, 0.0) + v
        bar.update(1)
        for report in filter(None, reports):
            writer.write(report)
        if iteration % cfg.log_every == 0 or iteration == total:
            check_finite(window, epoch)
            if len(window):  # else every step of it was skipped
                write_record(window, iteration, epoch)
            window, window_start = StepWindow(), time.perf_counter()
        if iteration % cfg.checkpoint_every == 0 and iteration < total:
            check_finite(window, epoch)  # never checkpoint a diverged model
            save(iteration)
    bar.close()
    if cfg.keep_checkpoints:
        save(iteration)
    final_path = os.path.join(cfg.output_dir, FINAL)
    if info.is_main:
        export_student(distiller.student, spec, train_set, final_path, {"iteration": iteration, "recipe": cfg.recipe})
        if not cfg.keep_checkpoints:  # a finished run needs no resume; the checkpoint is most of its disk use
            ckpt_io.remove(os.path.join(cfg.output_dir, ckpt_io.LAST))
    barrier(info)
    steps_run = max(1, iteration - start)
    summary = {"iterations": iteration, "final_checkpoint": final_path, "params": count_parameters(distiller.student),
               "train_seconds_per_iter": step_seconds / steps_run,
               "distill_term_seconds_per_iter": {k: v / steps_run for k, v in term_seconds_sum.items()},
               "distill_weights": distiller.effective_weights(), "skipped_steps": skips.total if skips else 0,
               "auto_weights": distiller.auto.report if distiller.auto is not None else None}
    if val_set is not None:
        metrics = evaluate(distiller.student, val_set, info, cfg.eval_batch_size, cfg.workers, cfg.progress)
        if info.is_main:
            summary["eval"] = metrics
            writer.write({"kind": "eval", "iteration": iteration, **metrics})
            with open(os.path.join(cfg.output_dir, "eval.json"), "w") as f:
                json.dump(metrics, f, indent=2)
            log("[kdtrain] eval: " + "  ".join(f"{k} {'n/a' if v is None else f'{v:.4f}'}" for k, v in metrics.items()))
    writer.close()
    return summary


def build_teacher(cfg: TrainConfig, num_classes: int):
    """(teacher, its ModelSpec, the class names it was trained on or None); (None, None, None) without one."""
    if cfg.teacher:
        teacher, spec, ckpt = load_detector(cfg.teacher)
        return teacher, spec, [c["name"] for c in ckpt.get("categories") or []] or None
    if cfg.teacher_arch:
        spec = ModelSpec(cfg.teacher_arch, num_classes, weights=cfg.teacher_weights, min_size=cfg.min_size,
                         max_size=cfg.max_size)
        return build_detector(spec), spec, None
    return None, None, None


def student_input_sizes(cfg: TrainConfig, teacher, log) -> tuple:
    """(min_size, max_size) of the student's transform.

    A low-resolution student (--student-scale s, Chen 2017 §4.1) gets the teacher's
    sizes times s; the teacher keeps its own transform at full resolution.
    """
    if cfg.student_scale == 1.0:
        return cfg.min_size, cfg.max_size
    if teacher is None:
        raise UsageError("--student-scale needs a teacher and a distillation --recipe")
    t_min, t_max = teacher.transform.min_size[-1], teacher.transform.max_size
    sizes = (max(1, round(t_min * cfg.student_scale)), max(1, round(t_max * cfg.student_scale)))
    log(f"[kdtrain] low-resolution student: input {sizes[0]}/{sizes[1]} px (teacher {t_min}/{t_max}, "
        f"x{cfg.student_scale:g}); --min-size/--max-size apply to the teacher only")
    return sizes


def build_datasets(cfg: TrainConfig):
    train_set = CocoDetection(cfg.train_images, cfg.train_ann, train=True, hflip_prob=cfg.hflip,
                              invalid_boxes=cfg.invalid_boxes, category_ids_as_labels=cfg.category_ids_as_labels)
    keep_labeled_fraction(train_set, cfg.labeled_fraction, cfg.labeled_subset_seed)
    val_set = None
    if cfg.val_images and cfg.val_ann and not cfg.no_eval:
        val_set = CocoDetection(cfg.val_images, cfg.val_ann, train=False, invalid_boxes=cfg.invalid_boxes,
                                category_ids_as_labels=cfg.category_ids_as_labels, require_annotations=False,
                                scoring=True)
        if val_set.cat_id_to_label != train_set.cat_id_to_label:
            raise DatasetError(f"{cfg.val_ann}: categories differ from {cfg.train_ann}")
    return train_set, val_set


def check_dataset_images(datasets, info: DistInfo, progress: bool) -> None:
    """Decode every image up front (each rank its share), so a bad file fails now and not hours in."""
    paths = sorted({d.image_path(i) for d in datasets if d is not None for i in range(len(d))})
    check_images(paths[info.rank::info.world_size], progress and info.is_main)


def export_student(student, spec: ModelSpec, dataset, path: str, extra: dict | None = None) -> None:
    """Student weights only (no adaptation layers): loads into plain torchvision."""
    ckpt_io.atomic_save({
        "model_spec": spec.to_dict(),
        "model_state": student.state_dict(),
        "categories": dataset.categories,
        "label_to_cat_id": dataset.label_to_cat_id,
        **(extra or {}),
    }, path)


def epochs_to_iterations(cfg: TrainConfig, per_epoch: int) -> int:
    """--epochs as iterations (a partial last epoch counts); UsageError when that is less than one."""
    if cfg.epochs * per_epoch < 1:
        raise UsageError(f"--epochs {cfg.epochs:g} is less than one iteration: an epoch here is {per_epoch} "
                         f"iterations (batches of {cfg.batch_size}); give at least {1 / per_epoch:.3g}, or "
                         "--iterations")
    return math.ceil(cfg.epochs * per_epoch)


def lr_factor(it: int, total: int, warmup_iters: int, warmup_factor: float, kind: str,
              steps: tuple = (), gamma: float = 0.1, min_factor: float = 0.0) -> float:
    """The learning rate's multiplier at iteration ``it``: linear warm-up, then constant, step or cosine decay."""
    if kind == "cosine":
        progress = min(1.0, it / max(1, total))
        base = min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    elif kind == "step":
        base = gamma ** sum(1 for s in steps if it >= s)
    elif kind == "constant":
        base = 1.0
    else:
        raise ValueError(f"unknown lr schedule {kind!r} (constant, step, cosine)")
    if it < warmup_iters:
        alpha = it / warmup_iters
        base *= warmup_factor * (1 - alpha) + alpha
    return base


def build_scheduler(optimizer, total: int, warmup_iters: int, kind: str, steps=(), gamma=0.1,
                    warmup_factor: float = 0.001):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it, total, warmup_iters, warmup_factor, kind, tuple(steps), gamma)
    )


def gradient_norm(params, clipped_norm, scaler):
    """The gradient's norm, for its finiteness flag: the clipping's when it clips; None under fp16 loss
    scaling, whose scaler skips the steps that overflow itself."""
    if scaler.is_enabled():
        return None
    if clipped_norm is not None:
        return clipped_norm
    return torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])


class StepWindow:
    """The losses and gradient flags of the steps since the last metrics record, kept as tensors on their device.

    Reading a loss (``float``, ``isfinite`` in an ``if``) waits for the device; doing it once per record
    instead of once per step keeps the training loop free of host syncs.
    """

    def __init__(self):
        self.steps: list[tuple[int, dict, dict]] = []  # (iteration, {name: 0-dim tensor}, {flag: 0-dim bool})

    def __len__(self) -> int:
        return len(self.steps)

    def add(self, iteration: int, values: dict, flags: dict | None = None) -> None:
        self.steps.append((iteration, {k: v.detach() for k, v in values.items()}, dict(flags or {})))

    def first_nonfinite(self):
        """(iteration, what went non-finite first: kdtrain/nonfinite.py's name) of the first step with a
        non-finite value or a cleared flag on any torchrun process, else None."""
        if not self.steps:
            return None
        ok = agreed(torch.stack([all_finite(values, flags) for _, values, flags in self.steps]))
        if bool(ok.all()):
            return None
        iteration, values, flags = self.steps[ok.tolist().index(False)]
        return iteration, culprit(values, flags) or ELSEWHERE

    def means(self) -> dict:
        """{name: mean over the steps that have it} as floats."""
        names = dict.fromkeys(k for _, values, _ in self.steps for k in values)
        return {k: float(torch.stack([v[k].float() for _, v, _ in self.steps if k in v]).mean()) for k in names}
