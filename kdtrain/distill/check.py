"""The distillation check: run before a distilled ``train`` starts, and alone by ``python -m kdtrain check``.

It catches the silent failures users of detector distillation report, and says what to do:

- **the teacher**: another class count or other class names than the data's stops the run; so does a
  teacher whose detection loss on a batch of the data is no better than a randomly initialised copy of
  its own network (an untrained, or wrongly loaded, teacher). ``--trust-teacher`` runs anyway.
- **the level pairs**: which student level imitates which teacher level, their map shapes, and the
  adaptation layers the terms added.
- **each term**: its first value, and its gradient on the student parameters it shares with the
  detection loss as a ratio to the detection loss's (at the term's weight). A ratio above SWAMP will
  swamp detection, one below NEGLIGIBLE does nothing; either warns with the weight that gives the
  automatic weights' target ratio. A term that is 0, not finite, or reaches no student parameter warns.

Nothing here changes the run's numbers: random draws happen under ``fork_rng``, BatchNorm layers stay
in eval mode, and gradients are taken with ``torch.autograd.grad`` (no ``.grad`` is written).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import torch
from torch import nn

from kdops.nn.mgd import fork_masks
from kdtrain.distill.auto_weights import shared_gradient_norms
from kdtrain.distill.recipes import AUTO_RATIO
from kdtrain.errors import UsageError
from kdtrain.models import ModelSpec, build_detector, detector_num_classes

SWAMP = 2.0          # weighted term gradient / detection gradient above this: the term will swamp detection
NEGLIGIBLE = 0.01    # below this: the term does nothing
UNTRAINED = 0.8      # teacher loss / a random copy's loss above this: the teacher is no better than random
TRUST_FLAG = "--trust-teacher"


@contextlib.contextmanager
def _loss_mode(model: nn.Module, batch_statistics: bool = False):
    """The detector computes its training losses and the state it had is back afterwards.

    BatchNorm layers use their running statistics (a frozen teacher), or with ``batch_statistics`` the
    batch's, as in the student's training step, and their running statistics are restored after.
    """
    was_training = model.training
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in norms] if batch_statistics else []
    model.train()
    if not batch_statistics:
        for m in norms:
            m.eval()
    try:
        yield model
    finally:
        model.train(was_training)
        for m, state in zip(norms, saved):
            m.load_state_dict(state)


def detection_loss(model: nn.Module, images, targets) -> float:
    """The sum of the detector's own training losses on one batch (no gradient, no state change)."""
    with torch.random.fork_rng(devices=[]), torch.no_grad(), _loss_mode(model):
        return float(sum(model(images, targets).values()))


def _label_space_problem(teacher_classes: int, teacher_names, student_classes: int, data_names) -> str | None:
    if teacher_classes != student_classes:
        return (f"the teacher predicts {teacher_classes - 1} classes, the data has {student_classes - 1}: "
                "it was trained for another task")
    if teacher_names and data_names and list(teacher_names) != list(data_names):
        return (f"the teacher was trained on classes {', '.join(teacher_names)}, the data has "
                f"{', '.join(data_names)}")
    return None


def check_teacher(student: nn.Module, teacher: nn.Module, teacher_spec: ModelSpec, teacher_names, data_names,
                  images, targets, trust: bool) -> tuple[dict, list[str]]:
    """The teacher's label space and training state: (record, lines). Raises UsageError unless ``trust``."""
    record = {"classes": detector_num_classes(teacher) - 1, "data_classes": detector_num_classes(student) - 1}
    problem = _label_space_problem(detector_num_classes(teacher), teacher_names, detector_num_classes(student),
                                   data_names)
    if problem is not None:
        if not trust:
            raise UsageError(f"distillation check: {problem}; give a teacher trained on this data's classes "
                             f"(or {TRUST_FLAG} to distil its features anyway)")
        return {**record, "problem": problem}, [f"teacher: {problem} ({TRUST_FLAG}: running anyway)"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        random_copy = build_detector(dataclasses.replace(teacher_spec, weights=None), load_weights=False)
    random_copy.to(next(teacher.parameters()).device)
    losses = {"teacher": detection_loss(teacher, images, targets),
              "random_teacher": detection_loss(random_copy, images, targets),
              "student": detection_loss(student, images, targets)}
    record.update(loss=losses)
    line = (f"teacher: detection loss {losses['teacher']:.3f} on {len(images)} training images (a random copy of "
            f"its network {losses['random_teacher']:.3f}; the student at its start {losses['student']:.3f})")
    if not losses["teacher"] < UNTRAINED * losses["random_teacher"]:
        problem = (f"the teacher's detection loss {losses['teacher']:.3f} is no better than a random copy of its "
                   f"network's ({losses['random_teacher']:.3f}): it is untrained, or trained on other data")
        if not trust:
            raise UsageError(f"distillation check: {problem}; give a trained teacher (or {TRUST_FLAG})")
        return {**record, "problem": problem}, [line, f"teacher: {problem} ({TRUST_FLAG}: running anyway)"]
    lines = [line]
    if losses["student"] < losses["teacher"]:
        lines.append(f"warning: the student starts better than its teacher on this batch ({losses['student']:.3f} < "
                     f"{losses['teacher']:.3f}): distillation would pull it toward a weaker model")
    return record, lines


def describe_pairs(distiller, ctx) -> tuple[list, list[str]]:
    """Each feature term's level pairs: student level -> teacher level, stride, map shapes, adaptation layer."""
    records, lines = [], []
    for name, term in distiller.terms.items():
        if not hasattr(term, "describe_pairs"):
            continue  # a head term: it reads the detector heads, not paired levels
        for p in term.describe_pairs(ctx):
            records.append({"term": name, **p})
            adapt = p["adaptation"] or "none"
            lines.append(f"{name}: student {p['student']} {p['student_shape']} -> teacher {p['teacher']} "
                         f"{p['teacher_shape']} @ stride {p['stride']}, adaptation {adapt}")
    return records, lines


def gradient_ratios(det_loss: torch.Tensor, raw: dict, weights: dict, params: list) -> dict:
    """Per loss key: {value, weight, ratio}: the weighted term's gradient norm on the student parameters it
    shares with the detection loss, over the detection loss's (None where it reaches none of them). An
    automatic key (weight None) is measured at weight 1: the calibration sets its weight from this ratio."""
    norms = shared_gradient_norms(det_loss, raw, params)
    out = {}
    for key, value in raw.items():
        term_norm, det_norm = norms.get(key, (None, None))
        ratio = None
        if term_norm is not None and float(det_norm) > 0:
            ratio = (1.0 if weights[key] is None else weights[key]) * float(term_norm) / float(det_norm)
        out[key] = {"value": float(value.detach()), "weight": weights[key], "ratio": ratio}
    return out


def term_warnings(terms: dict) -> list[str]:
    """One line per term that will swamp detection, does nothing, is 0 or not finite, or is wired to nothing."""
    lines = []
    for key, t in terms.items():
        value, weight, ratio = t["value"], t["weight"], t["ratio"]
        automatic = weight is None  # its calibration sets the ratio: only a dead or non-finite term warns
        if not math.isfinite(value):
            lines.append(f"warning: {key} is {value} on the first batch; check the teacher and the inputs")
        elif ratio is None or ratio == 0.0:
            lines.append(f"warning: {key} gives the student no gradient (value {value:.4g}): it is wired to nothing "
                         "it trains, so it cannot help")
        elif not automatic and (ratio > SWAMP or ratio < NEGLIGIBLE):
            what = "will swamp the detection loss" if ratio > SWAMP else "does almost nothing"
            suggested = weight * AUTO_RATIO / ratio
            lines.append(f"warning: {key} {what}: its gradient is {ratio:.3g}x the detection loss's at weight "
                         f"{weight:g}; try --distill-weights {key}={suggested:.3g} (or {key}=auto)")
    return lines


def check_batch(dataset, size: int, device) -> tuple[list, list]:
    """The first ``size`` training images that hold boxes, as a batch on ``device`` (the dataset's flips come
    from their own per-image generator: reading them draws nothing from the run's random state)."""
    indices = [i for i in range(len(dataset)) if len(dataset.boxes[i])][:size] or list(range(min(size, len(dataset))))
    images, targets = [], []
    for i in indices:
        image, target = dataset[i]
        images.append(image.to(device))
        targets.append({k: v.to(device) if torch.is_tensor(v) else v for k, v in target.items()})
    return images, targets


def run_check(distiller, images, targets, *, teacher_spec: ModelSpec, teacher_names, data_names,
              trust_teacher: bool = False, log=print) -> dict:
    """The whole check on one batch; logs its lines and returns the record for metrics.jsonl."""
    record, lines = check_teacher(distiller.student, distiller.teacher, teacher_spec, teacher_names, data_names,
                                  images, targets, trust_teacher)
    params = [p for p in distiller.student.parameters() if p.requires_grad]
    # fork_masks: MGD's masks come from each level's own generator, not torch's; their draws are put back too.
    with torch.random.fork_rng(devices=[]), fork_masks(distiller), \
            _loss_mode(distiller.student, batch_statistics=True):
        det_losses, raw, ctx = distiller.raw_losses(images, targets)
        terms = gradient_ratios(sum(det_losses.values()), raw, distiller.configured_weights(), params)
    pairs, pair_lines = describe_pairs(distiller, ctx)
    lines += pair_lines
    lines += [f"{key}: first value {t['value']:.4g}, "
              + ("weight auto (calibrated in training), gradient at weight 1 " if t["weight"] is None
                 else f"weight {t['weight']:g}, gradient ")
              + ("none" if t["ratio"] is None else f"{t['ratio']:.3g}x the detection loss's")
              for key, t in terms.items()]
    warnings = term_warnings(terms)
    for line in lines + warnings:
        log(f"[check] {line}")
    return {"kind": "distill_check", "teacher": record, "pairs": pairs, "terms": terms, "warnings": warnings}
